"""Do two objectives push the model the same way on one dataset? Split-half gradient agreement.

Compares training objectives (RFT, BCPG, NSA, DPO, ...) by their full-dataset gradients at one point (typically the
reference policy, where an offline run starts). A full-data gradient is ``signal + sampling noise``; its cosine with
another objective's mixes both. Splitting the data's groups (prompts) into two random halves separates them:

* ``reliability[a]`` — cosine between ``a``'s gradients on the two halves: 1 when the data pins the direction down,
  near 0 when it is mostly noise (an objective with a good control variate is more reliable on the same data).
* ``cross_half[a|b]`` — cosine between ``a`` on one half and ``b`` on the other (averaged both ways): shared signal
  only, the noises being independent.
* ``signal_cosine[a|b] = cross_half / sqrt(reliability[a] * reliability[b])`` — the two objectives' *expected*
  directions, corrected for noise the way a correlation is corrected for attenuation: ~1 when they estimate the same
  direction, whatever their noise (e.g. REINFORCE with and without a baseline).
* ``same_data[a|b]`` — the plain cosine of the two on the same half (what a first optimizer step would see).

Each is averaged over many halvings of the groups (``*_spread``: the std over them). The estimate assumes the halves
are exchangeable (equal-sized random halves of independent groups); it is itself an estimate (it can exceed 1 by
noise) and is unstable when a reliability is near 0.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping

import numpy as np

GradientOfRows = Callable[[np.ndarray], np.ndarray]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        raise ValueError("a gradient is exactly zero on one half of the data; its direction is undefined")
    return float(a @ b / (na * nb))


def gradient_agreement(
    gradients: Mapping[str, GradientOfRows], groups: np.ndarray, *, folds: int = 8, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Split-half agreement of several objectives' gradients (module docstring).

    The groups are dealt at random into ``folds`` folds and each objective's gradient is taken once per fold (one
    pass over the data per objective); every way of putting half the folds on each side (35 for 8 folds) is then one
    halving, and the figures are means over them.

    Args:
      gradients: ``{name: fn(rows) -> [P] float}``: the *summed* (unnormalised) gradient of that objective over the
        given row indices, flattened; any fixed scale per objective is fine (only directions are compared).
      groups: ``[rows]`` group id of every row (rows of one group always go to the same fold: their baseline is
        shared).
      folds: an even number >= 2; fewer groups than folds: the largest even number of folds they fill.
      seed: of the fold assignment.
    Returns:
      ``{"reliability": {a: c}, "signal_cosine": {"a|b": c}, "cross_half": {...}, "same_data": {...}}`` plus the same
      keys with ``_spread`` (std over the halvings of this one fold assignment, so it understates the sampling error);
      pairs are named in the mapping's order.
    """
    groups = np.asarray(groups)
    unique = np.unique(groups)
    if len(unique) < 2:
        raise ValueError(f"gradient_agreement needs at least 2 groups to split, got {len(unique)}")
    if not gradients:
        raise ValueError("gradient_agreement needs at least one objective")
    if folds < 2 or folds % 2:
        raise ValueError(f"folds must be an even number >= 2, got {folds}")
    folds = min(folds, len(unique) - len(unique) % 2)
    rng = np.random.default_rng(seed)
    fold_of_group = dict(zip(rng.permutation(unique).tolist(), np.arange(len(unique)) % folds, strict=True))
    fold_of_row = np.asarray([fold_of_group[g] for g in groups.tolist()])
    names = list(gradients)
    per_fold = {
        name: np.stack(
            [np.asarray(gradients[name](np.nonzero(fold_of_row == k)[0]), np.float64).ravel() for k in range(folds)]
        )
        for name in names
    }
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    # Each halving once: the fold sets containing fold 0 (their complement is the other half).
    halvings = [c for c in itertools.combinations(range(folds), folds // 2) if c[0] == 0]
    per_split: dict[str, dict[str, list[float]]] = {
        k: {} for k in ("reliability", "cross_half", "same_data", "signal_cosine")
    }
    for first in halvings:
        side = np.isin(np.arange(folds), first)
        g = {name: (per_fold[name][side].sum(0), per_fold[name][~side].sum(0)) for name in names}
        reliability = {name: _cosine(*g[name]) for name in names}
        for name in names:
            per_split["reliability"].setdefault(name, []).append(reliability[name])
        for a, b in pairs:
            key = f"{a}|{b}"
            cross = 0.5 * (_cosine(g[a][0], g[b][1]) + _cosine(g[a][1], g[b][0]))
            same = 0.5 * (_cosine(g[a][0], g[b][0]) + _cosine(g[a][1], g[b][1]))
            denominator = np.sqrt(max(reliability[a], 0.0) * max(reliability[b], 0.0))
            signal = cross / denominator if denominator > 0 else float("nan")
            per_split["cross_half"].setdefault(key, []).append(cross)
            per_split["same_data"].setdefault(key, []).append(same)
            per_split["signal_cosine"].setdefault(key, []).append(float(signal))
    out: dict[str, dict[str, float]] = {}
    for kind, values in per_split.items():
        # A halving where an objective's two halves disagree (reliability <= 0) has no noise-corrected cosine: it is
        # left out of the mean (NaN only when every halving is such).
        finite = {k: [x for x in v if np.isfinite(x)] for k, v in values.items()}
        out[kind] = {k: float(np.mean(v)) if v else float("nan") for k, v in finite.items()}
        out[f"{kind}_spread"] = {k: float(np.std(v)) if v else float("nan") for k, v in finite.items()}
    return out


def format_agreement(result: Mapping[str, Mapping[str, float]]) -> str:
    """A few readable lines: reliability per objective, then signal / same-data cosine per pair."""
    lines = ["split-half gradient reliability: " + ", ".join(f"{k} {v:.3f}" for k, v in result["reliability"].items())]
    for key, value in result["signal_cosine"].items():
        a, b = key.split("|")
        signal = (
            f"{value:.3f} ± {result['signal_cosine_spread'][key]:.3f}"
            if np.isfinite(value)
            else "n/a (a reliability <= 0: too few groups)"
        )
        lines.append(f"  {a} vs {b}: noise-corrected cosine {signal}, same-data cosine {result['same_data'][key]:.3f}")
    return "\n".join(lines)

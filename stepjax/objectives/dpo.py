"""Direct preference optimisation: every ``loss_type`` of TRL 1.16's ``DPOTrainer``, its f-divergences, mixtures.

Inputs are per-token log-probs of the chosen and rejected completions (``[pairs, len]``, aligned with the
``targets`` layout) and their masks; the function sums over tokens inside. Reference log-probs come per token
(``[pairs, len]``, summed with the same masks) or as per-sequence sums (``[pairs]``, e.g. precomputed once by
``stepjax.objectives.reference_cache``); ``reference_free=True`` uses a uniform reference (log-ratio = log-prob).
A mask is the place to exclude token classes (``exclude_tokens``): Step-Audio-AQAA leaves audio tokens out of DPO.

Terms: ``dpo`` (the weighted sum of the per-pair losses, a mean over pairs) and, with ``sft`` among the loss types,
``dpo_sft`` (a token mean over chosen tokens, as TRL computes it); both are losses (``dpo_loss_weights``). Metrics
use TRL's names: ``rewards/chosen``, ``rewards/rejected``, ``rewards/accuracies``, ``rewards/margins``,
``logps/chosen``, ``logps/rejected``. ``aot``/``aot_unpaired`` sort log-ratios across the batch, so (as in TRL) their
value depends on how a batch is split into micro-batches; every other type is exact under accumulation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from stepjax.objectives.lm import token_log_probs
from stepjax.objectives.registry import register_loss
from stepjax.objectives.terms import LossTerms, Term

DPO_LOSS_TYPES = (
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sft",
    "sigmoid_norm",
)
F_DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")
DPO_LOSS_TERMS = ("dpo", "dpo_sft")


def dpo_loss_weights(loss_type: str | Sequence[str]) -> dict[str, float]:
    """``loss_weights`` for ``make_train_step``: the loss terms ``dpo_loss`` returns for these loss types (the
    per-type weights are already inside the terms)."""
    types = [loss_type] if isinstance(loss_type, str) else list(loss_type)
    weights = {"dpo": 1.0} if any(t != "sft" for t in types) else {}
    if "sft" in types:
        weights["dpo_sft"] = 1.0
    return weights


# ----------------------------------------------------------------------------------------------- batch layout


def stack_pairs(chosen: jax.Array, rejected: jax.Array) -> jax.Array:
    """``[pairs, ...] x 2 -> [2 * pairs, ...]`` (chosen first): one forward pass over both completions."""
    return jnp.concatenate([chosen, rejected], axis=0)


def split_pairs(stacked: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Inverse of ``stack_pairs``: ``[2 * pairs, ...] -> (chosen, rejected)``."""
    if stacked.shape[0] % 2:
        raise ValueError(f"a stacked pair batch needs an even leading size, got {stacked.shape}")
    half = stacked.shape[0] // 2
    return stacked[:half], stacked[half:]


def pair_token_log_probs(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-token log-probs of stacked pairs: ``logits [2P, len, vocab]``, ``targets [2P, len]`` ->
    ``(chosen [P, len], rejected [P, len])``."""
    return split_pairs(token_log_probs(logits, targets))


def log_sum_sq_probs(logits: jax.Array) -> jax.Array:
    """``log sum_v p_v^2`` per position (``[..., vocab] -> [...]``): the WPO weighting's normaliser."""
    logits = logits.astype(jnp.float32)
    return jax.nn.logsumexp(2.0 * logits, axis=-1) - 2.0 * jax.nn.logsumexp(logits, axis=-1)


def exclude_tokens(mask: jax.Array, tokens: jax.Array, excluded_ids: Sequence[int] | jax.Array) -> jax.Array:
    """``mask`` with every position whose token is in ``excluded_ids`` zeroed (e.g. audio tokens)."""
    excluded = jnp.isin(tokens, jnp.asarray(excluded_ids, dtype=tokens.dtype))
    return mask * (~excluded).astype(mask.dtype)


def pair_sequence_log_probs(
    chosen: jax.Array,
    rejected: jax.Array,
    chosen_mask: jax.Array,
    rejected_mask: jax.Array,
    *,
    ld_alpha: float | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Masked sums over tokens: ``[P, len] -> [P]`` for both sides.

    With ``ld_alpha`` (LD-DPO): tokens beyond the shorter completion's length count with weight ``ld_alpha``
    (positions counted over valid tokens only, as TRL does).
    """
    cm, rm = chosen_mask.astype(jnp.float32), rejected_mask.astype(jnp.float32)
    chosen, rejected = chosen.astype(jnp.float32) * cm, rejected.astype(jnp.float32) * rm
    if ld_alpha is None:
        return chosen.sum(-1), rejected.sum(-1)
    shared = jnp.minimum(cm.sum(-1), rm.sum(-1))[:, None]

    def weigh(x, m):
        pos = jnp.cumsum(m, axis=-1)
        weights = jnp.where(pos <= shared, 1.0, ld_alpha) * m
        return (x * weights).sum(-1)

    return weigh(chosen, cm), weigh(rejected, rm)


# ------------------------------------------------------------------------------------------------------ loss


def _f_divergence_scores(logratios: jax.Array, kind: str, alpha: float) -> jax.Array:
    """``f'(pi / pi_ref)`` of the chosen f-divergence, from log-ratios (reverse KL: the log-ratio itself)."""
    if kind == "reverse_kl":
        return logratios
    if kind == "forward_kl":
        return 1.0 - jnp.exp(-logratios)
    if kind == "js_divergence":
        return math.log(2.0) + jax.nn.log_sigmoid(logratios)
    if kind == "alpha_divergence":
        if abs(alpha - 1.0) < 1e-6:  # the limit f'(t) -> log t
            return logratios
        # Clamp as TRL does so exp stays finite in float32.
        return (jnp.exp(jnp.minimum((alpha - 1.0) * logratios, 80.0)) - 1.0) / (alpha - 1.0)
    raise ValueError(f"unknown f_divergence {kind!r}; expected one of {F_DIVERGENCES}")


def _pair_losses(
    loss_type: str,
    *,
    beta: float,
    label_smoothing: float,
    discopop_tau: float,
    logps: tuple[jax.Array, jax.Array],
    ref_logps: tuple[jax.Array, jax.Array],
    scores: tuple[jax.Array, jax.Array],
    lengths: tuple[jax.Array, jax.Array],
) -> jax.Array:
    """Per-pair loss ``[P]`` of one loss type (TRL 1.16 ``DPOTrainer._compute_loss`` maths)."""
    log_sig = jax.nn.log_sigmoid
    chosen_lr, rejected_lr = logps[0] - ref_logps[0], logps[1] - ref_logps[1]
    delta = scores[0] - scores[1]
    eps = label_smoothing
    if loss_type == "sigmoid":
        if eps:  # cDPO (Mitchell 2023); TRL 1.16 ignores label_smoothing here, older TRL applied it
            return -(1.0 - eps) * log_sig(beta * delta) - eps * log_sig(-beta * delta)
        return -log_sig(beta * delta)
    if loss_type == "hinge":
        return jax.nn.relu(1.0 - beta * delta)
    if loss_type in ("ipo", "sigmoid_norm"):  # length-averaged scores
        norm = scores[0] / jnp.maximum(lengths[0], 1.0) - scores[1] / jnp.maximum(lengths[1], 1.0)
        return jnp.square(norm - 1.0 / (2.0 * beta)) if loss_type == "ipo" else -log_sig(beta * norm)
    if loss_type == "exo_pair":
        z = beta * delta
        return jax.nn.sigmoid(z) * (log_sig(z) - math.log1p(-eps)) + jax.nn.sigmoid(-z) * (log_sig(-z) - math.log(eps))
    if loss_type == "nca_pair":
        c, r = beta * chosen_lr, beta * rejected_lr
        return -log_sig(c) - 0.5 * log_sig(-c) - 0.5 * log_sig(-r)
    if loss_type == "robust":
        return (-(1.0 - eps) * log_sig(beta * delta) + eps * log_sig(-beta * delta)) / (1.0 - 2.0 * eps)
    if loss_type == "bco_pair":
        return -log_sig(beta * chosen_lr) - log_sig(-beta * rejected_lr)
    if loss_type == "sppo_hard":
        return jnp.square(chosen_lr - 0.5 / beta) + jnp.square(rejected_lr + 0.5 / beta)
    if loss_type in ("aot", "aot_unpaired"):
        if loss_type == "aot":
            d = jnp.sort(logps[0] - logps[1]) - jnp.sort(ref_logps[0] - ref_logps[1])
        else:
            d = jnp.sort(chosen_lr) - jnp.sort(rejected_lr)
        return -log_sig(beta * d) * (1.0 - eps) - log_sig(-beta * d) * eps
    if loss_type == "apo_zero":
        return (1.0 - jax.nn.sigmoid(beta * chosen_lr)) + jax.nn.sigmoid(beta * rejected_lr)
    if loss_type == "apo_down":
        return jax.nn.sigmoid(beta * chosen_lr) + (1.0 - jax.nn.sigmoid(beta * (chosen_lr - rejected_lr)))
    if loss_type == "discopop":
        z = beta * delta
        modulation = jax.nn.sigmoid(z / discopop_tau)
        return -log_sig(z) * (1.0 - modulation) + jnp.exp(-z) * modulation
    raise ValueError(f"unknown DPO loss_type {loss_type!r}; expected one of {DPO_LOSS_TYPES}")


def _check_options(types: list[str], weights: list[float], label_smoothing: float, f_divergence: str) -> None:
    unknown = [t for t in types if t not in DPO_LOSS_TYPES]
    if unknown:
        raise ValueError(f"unknown DPO loss_type {unknown}; expected entries of {DPO_LOSS_TYPES}")
    if len(weights) != len(types):
        raise ValueError(f"loss_weights has {len(weights)} entries for {len(types)} loss types {types}")
    if f_divergence not in F_DIVERGENCES:
        raise ValueError(f"unknown f_divergence {f_divergence!r}; expected one of {F_DIVERGENCES}")
    if "exo_pair" in types and not 0.0 < label_smoothing < 1.0:
        raise ValueError(f"loss_type 'exo_pair' needs 0 < label_smoothing < 1 (1e-3 is usual), got {label_smoothing}")
    if "robust" in types and not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"loss_type 'robust' needs 0 <= label_smoothing < 0.5, got {label_smoothing}")


def _reference_sums(
    ref_chosen: jax.Array, ref_rejected: jax.Array, cm: jax.Array, rm: jax.Array, ld_alpha: float | None
) -> tuple[jax.Array, jax.Array]:
    """Reference sums ``[P]``: per-token references ``[P, len]`` are summed like the policy's (LD-DPO weights
    included); per-sequence sums ``[P]`` (a precomputed cache) are used as they are."""
    if ref_chosen.ndim != ref_rejected.ndim or ref_chosen.ndim not in (1, 2):
        raise ValueError(
            "ref_chosen_log_probs and ref_rejected_log_probs must both be [pairs] sums or both [pairs, len] per "
            f"token, got {ref_chosen.shape} and {ref_rejected.shape}"
        )
    if ref_chosen.ndim == 1:
        return ref_chosen.astype(jnp.float32), ref_rejected.astype(jnp.float32)
    return pair_sequence_log_probs(ref_chosen, ref_rejected, cm, rm, ld_alpha=ld_alpha)


@register_loss("dpo")
def dpo_loss(
    chosen_log_probs: jax.Array,
    rejected_log_probs: jax.Array,
    chosen_mask: jax.Array,
    rejected_mask: jax.Array,
    ref_chosen_log_probs: jax.Array | None = None,
    ref_rejected_log_probs: jax.Array | None = None,
    *,
    beta: float = 0.1,
    loss_type: str | Sequence[str] = "sigmoid",
    loss_weights: Sequence[float] | None = None,
    label_smoothing: float = 0.0,
    f_divergence: str = "reverse_kl",
    f_alpha: float = 1.0,
    discopop_tau: float = 0.05,
    ld_alpha: float | None = None,
    reference_free: bool = False,
    chosen_log_sum_sq_probs: jax.Array | None = None,
    rejected_log_sum_sq_probs: jax.Array | None = None,
) -> LossTerms:
    """DPO-family loss of preference pairs.

    Args:
      chosen_log_probs, rejected_log_probs: ``[P, len]`` per-token log-probs under the policy.
      chosen_mask, rejected_mask: ``[P, len]`` completion tokens that count (exclude token classes here).
      ref_chosen_log_probs, ref_rejected_log_probs: reference log-probs, ``[P, len]`` per token or ``[P]`` sums.
      beta: temperature of the implicit reward ``beta * (log pi - log pi_ref)``.
      loss_type: one name or a list from ``DPO_LOSS_TYPES``; loss_weights: one weight per type (default 1 each).
      label_smoothing: cDPO (``sigmoid``) / ``robust`` flip probability, EXO's epsilon, aot smoothing. TRL 1.16
        ignores it for ``sigmoid``; here ``sigmoid`` with ``label_smoothing > 0`` is cDPO.
      f_divergence, f_alpha: ``reverse_kl`` (standard DPO), ``forward_kl``, ``js_divergence``,
        ``alpha_divergence`` with coefficient ``f_alpha``.
      discopop_tau: DiscoPOP's modulation temperature. ld_alpha: LD-DPO weight of the longer tail.
      reference_free: treat the reference as uniform (no reference log-probs).
      chosen_log_sum_sq_probs, rejected_log_sum_sq_probs: ``[P, len]`` from ``log_sum_sq_probs(logits)``; when
        given, pairs are weighted as in WPO (TRL ``use_weighting``).
    Returns:
      ``{'dpo', 'dpo_sft' (with sft), 'rewards/chosen', 'rewards/rejected', 'rewards/accuracies',
      'rewards/margins', 'logps/chosen', 'logps/rejected'}``.
    """
    types = [loss_type] if isinstance(loss_type, str) else list(loss_type)
    weights = [1.0] * len(types) if loss_weights is None else [float(w) for w in loss_weights]
    _check_options(types, weights, label_smoothing, f_divergence)
    cm, rm = chosen_mask.astype(jnp.float32), rejected_mask.astype(jnp.float32)
    logps = pair_sequence_log_probs(chosen_log_probs, rejected_log_probs, cm, rm, ld_alpha=ld_alpha)
    if reference_free:
        if ref_chosen_log_probs is not None or ref_rejected_log_probs is not None:
            raise ValueError("reference_free=True but reference log-probs were given; pass one or the other")
        ref_logps = (jnp.zeros_like(logps[0]), jnp.zeros_like(logps[1]))
    else:
        if ref_chosen_log_probs is None or ref_rejected_log_probs is None:
            raise ValueError("DPO needs ref_chosen_log_probs and ref_rejected_log_probs (or reference_free=True)")
        ref_logps = _reference_sums(
            jax.lax.stop_gradient(ref_chosen_log_probs), jax.lax.stop_gradient(ref_rejected_log_probs), cm, rm, ld_alpha
        )
    chosen_lr, rejected_lr = logps[0] - ref_logps[0], logps[1] - ref_logps[1]
    scores = (
        _f_divergence_scores(chosen_lr, f_divergence, f_alpha),
        _f_divergence_scores(rejected_lr, f_divergence, f_alpha),
    )
    pair_weights = None
    if chosen_log_sum_sq_probs is not None or rejected_log_sum_sq_probs is not None:
        if chosen_log_sum_sq_probs is None or rejected_log_sum_sq_probs is None:
            raise ValueError("WPO weighting needs chosen_log_sum_sq_probs and rejected_log_sum_sq_probs")

        def wpo(lp, lssp, m):
            aligned = (lp.astype(jnp.float32) - lssp.astype(jnp.float32)) * m
            return jnp.exp(aligned.sum(-1) / jnp.maximum(m.sum(-1), 1.0))

        pair_weights = jax.lax.stop_gradient(
            wpo(chosen_log_probs, chosen_log_sum_sq_probs, cm) * wpo(rejected_log_probs, rejected_log_sum_sq_probs, rm)
        )
    lengths = (cm.sum(-1), rm.sum(-1))
    pairs = jnp.asarray(logps[0].shape[0], jnp.float32)
    terms: LossTerms = {}
    total = jnp.zeros((), jnp.float32)
    for name, weight in zip(types, weights, strict=True):
        if name == "sft":
            nll = -(chosen_log_probs.astype(jnp.float32) * cm).sum()
            # With WPO, TRL's code means to weigh the batch-level sft loss per pair, i.e. sft * mean(weights) (TRL
            # 1.16 itself raises on sft + use_weighting); that mean is per micro-batch, so not exact under splitting.
            factor = 1.0 if pair_weights is None else pair_weights.mean()
            terms["dpo_sft"] = Term(weight * nll * factor, cm.sum())
            continue
        losses = _pair_losses(
            name,
            beta=beta,
            label_smoothing=label_smoothing,
            discopop_tau=discopop_tau,
            logps=logps,
            ref_logps=ref_logps,
            scores=scores,
            lengths=lengths,
        )
        if pair_weights is not None:
            losses = losses * pair_weights
        total = total + weight * losses.sum()
    if any(t != "sft" for t in types):
        terms["dpo"] = Term(total, pairs)
    chosen_rewards = jax.lax.stop_gradient(beta * chosen_lr)
    rejected_rewards = jax.lax.stop_gradient(beta * rejected_lr)
    terms.update(
        {
            "rewards/chosen": Term(chosen_rewards.sum(), pairs),
            "rewards/rejected": Term(rejected_rewards.sum(), pairs),
            "rewards/accuracies": Term((chosen_rewards > rejected_rewards).astype(jnp.float32).sum(), pairs),
            "rewards/margins": Term((chosen_rewards - rejected_rewards).sum(), pairs),
            "logps/chosen": Term(jax.lax.stop_gradient(logps[0]).sum(), pairs),
            "logps/rejected": Term(jax.lax.stop_gradient(logps[1]).sum(), pairs),
        }
    )
    return terms

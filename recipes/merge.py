"""Merge checkpoints: weighted linear merge, task arithmetic, SLERP or TIES, params only.

    python -m recipes.merge --method linear --models A,B --weights 0.5,0.5 --out MERGED
    python -m recipes.merge --method task_arithmetic --base BASE --models A,B --weights 1.0,0.5 --out MERGED
    python -m recipes.merge --method slerp --models A,B --t 0.3 --out MERGED
    python -m recipes.merge --method ties --base BASE --models A,B [--weights 1,1] --density 0.2 --out MERGED

Inputs are Orbax checkpoints: a params-only Orbax directory, a ``recipes.convert`` folder (``params/`` +
``stepjax_config.json``; the output keeps that layout and its side files), or a train checkpoint directory or step
(its ``params``). All inputs must have the same parameters, shapes and dtypes. The output is written to a
temporary sibling and renamed into place. Exit status: 0 done, 2 bad input (one line on stderr).
"""

from __future__ import annotations

import sys
import time

from absl import app, flags, logging

from recipes.cli import parse_flags

_METHOD = flags.DEFINE_enum("method", None, ["linear", "task_arithmetic", "slerp", "ties"], "Merge method.")
_MODELS = flags.DEFINE_list("models", None, "Comma-separated checkpoints to merge (fine-tuned models).")
_BASE = flags.DEFINE_string("base", None, "Base checkpoint (task_arithmetic, ties).")
_WEIGHTS = flags.DEFINE_list("weights", None, "One weight per --models entry (linear, task_arithmetic, ties).")
_T = flags.DEFINE_float("t", None, "SLERP interpolation factor in [0, 1] (0 = first model).")
_DENSITY = flags.DEFINE_float("density", 0.2, "TIES: fraction of each task vector kept (by magnitude).")
_SCALE = flags.DEFINE_float("scale", 1.0, "TIES: scale of the merged task vector.")
_NORMALIZE = flags.DEFINE_bool("normalize", False, "linear: divide the weights by their sum.")
_OUT = flags.DEFINE_string("out", None, "Output folder (must not exist or be empty, unless --overwrite).")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Replace an existing non-empty output folder.", allow_override=True
)  # recipes.convert defines it too


class UsageError(ValueError):
    """Flags that do not describe a merge."""


def _parse_weights(weights: list[str] | None, n: int, method: str) -> list[float] | None:
    if weights is None:
        return None
    try:
        values = [float(w) for w in weights]
    except ValueError as err:
        raise UsageError(f"--weights must be numbers, got {','.join(weights)}") from err
    if len(values) != n:
        raise UsageError(f"--weights has {len(values)} entries for {n} --models ({method})")
    return values


def merge(
    method: str,
    models: list[str],
    out: str,
    *,
    base: str | None = None,
    weights: list[str] | None = None,
    t: float | None = None,
    density: float = 0.2,
    scale: float = 1.0,
    normalize: bool = False,
    overwrite: bool = False,
) -> str:
    """Runs one merge; returns a one-line summary. Raises ``UsageError`` or the library's bad-input errors."""
    from stepjax.train import merge as mg

    w = _parse_weights(weights, len(models), method)
    needs_base = method in ("task_arithmetic", "ties")
    if needs_base and base is None:
        raise UsageError(f"--method {method} needs --base")
    if not needs_base and base is not None:
        raise UsageError(f"--method {method} takes no --base")
    if method == "slerp" and (len(models) != 2 or t is None):
        raise UsageError(f"--method slerp needs exactly 2 --models and --t, got {len(models)} models, t={t}")
    if method in ("linear", "task_arithmetic") and w is None:
        raise UsageError(f"--method {method} needs --weights (one per model)")
    start = time.perf_counter()
    loaded = [mg.load_params(p) for p in ([base] if needs_base else []) + models]
    trees, names = [tree for tree, _ in loaded], ([base] if needs_base else []) + models
    if method == "linear":
        merged = mg.linear_merge(trees, w, normalize=normalize, names=names)
    elif method == "task_arithmetic":
        merged = mg.task_arithmetic(trees[0], trees[1:], w, names=names)
    elif method == "slerp":
        merged = mg.slerp(trees[0], trees[1], t, names=names)
    else:
        merged = mg.ties_merge(trees[0], trees[1:], w, density=density, scale=scale, names=names)
    path = mg.save_params(out, merged, like=loaded[0][1], overwrite=overwrite)
    return f"merged {len(models)} models ({method}) -> {path} ({time.perf_counter() - start:.1f}s)"


def _bad_input_errors() -> tuple[type[BaseException], ...]:
    from stepjax.train import CheckpointError
    from stepjax.train.merge import MergeError

    return UsageError, MergeError, CheckpointError, FileNotFoundError, FileExistsError, NotADirectoryError


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        print(f"error: unexpected arguments {argv[1:]}", file=sys.stderr)
        return 2
    missing = [f"--{n}" for n, f in (("method", _METHOD), ("models", _MODELS), ("out", _OUT)) if f.value is None]
    if missing:
        example = "--method linear --models A,B --weights 0.5,0.5 --out MERGED"
        print(f"error: {', '.join(missing)} required, e.g. {example}", file=sys.stderr)
        return 2
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax INFO logs drown the summary line
    try:
        summary = merge(
            _METHOD.value,
            _MODELS.value,
            _OUT.value,
            base=_BASE.value,
            weights=_WEIGHTS.value,
            t=_T.value,
            density=_DENSITY.value,
            scale=_SCALE.value,
            normalize=_NORMALIZE.value,
            overwrite=_OVERWRITE.value,
        )
    except _bad_input_errors() as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(summary)
    return 0


def entry() -> None:
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    entry()

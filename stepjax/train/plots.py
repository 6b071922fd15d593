"""Training curves from ``metrics.jsonl``: loss lines on the left axis, eval points on a twin right axis (or on the
same axis, for quantities on one scale such as a reward and an accuracy)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from stepjax.train.metrics import iter_scalars, read_metrics


def plot_metrics(
    jsonl_path: str | os.PathLike,
    out_png: str | os.PathLike,
    keys: Sequence[str] = ("loss",),
    eval_keys: Sequence[str] = ("eval/accuracy",),
    *,
    title: str | None = None,
    log_scale: bool | None = None,
    shared_axis: bool = False,
) -> Path:
    """Draws ``keys`` as lines over steps and ``eval_keys`` as marked points on a twin axis; writes ``out_png``.

    ``shared_axis`` draws the eval points on the lines' own axis instead (a train reward and a held-out accuracy
    read against one scale; two independently scaled axes would make a gap between them look like an overlap).

    Keys absent from the file are left out (a run without evals still plots its loss); if none of the requested keys
    has a value, ``ValueError`` names the keys the file does have. ``log_scale`` (default: when the positive values
    of ``keys`` span more than two decades) draws the left axis logarithmically. Returns the PNG path.
    """
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on CI machines or pods
    import matplotlib.pyplot as plt

    records = read_metrics(jsonl_path)
    train = {k: list(iter_scalars(records, k)) for k in keys}
    evals = {k: list(iter_scalars(records, k)) for k in eval_keys}
    train = {k: v for k, v in train.items() if v}
    evals = {k: v for k, v in evals.items() if v}
    if not train and not evals:
        present = sorted({k for r in records for k in r} - {"step"})
        raise ValueError(f"{jsonl_path} has no values for {list(keys) + list(eval_keys)}; its keys: {present}")

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    handles = []
    for k, points in train.items():
        steps, values = zip(*points, strict=True)
        handles += ax.plot(steps, values, label=k, linewidth=1.2)
    values_seen = [v for points in train.values() for _, v in points if v > 0]
    if log_scale is None:
        log_scale = bool(values_seen) and max(values_seen) > 100 * min(values_seen)
    if log_scale:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(", ".join(train) if train else "")
    ax.grid(alpha=0.3)
    if evals:
        ax2 = ax.twinx() if train and not shared_axis else ax
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for i, (k, points) in enumerate(evals.items()):
            steps, values = zip(*points, strict=True)
            color = colors[(len(train) + i) % len(colors)]
            handles += ax2.plot(steps, values, "o--", label=k, color=color, markersize=4, linewidth=0.8)
        ax2.set_ylabel(", ".join([*train, *evals]) if ax2 is ax else ", ".join(evals))
        shown = [*evals.values(), *(train.values() if ax2 is ax else ())]
        if all(0.0 <= v <= 1.0 for points in shown for _, v in points):
            ax2.set_ylim(-0.02, 1.02)  # accuracies and rates: show the whole range
    ax.legend(handles=handles, labels=[h.get_label() for h in handles], loc="best")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out

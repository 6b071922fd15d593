"""plot_metrics: a PNG of the loss curve with eval points on a twin axis."""

from __future__ import annotations

import json

import matplotlib
import matplotlib.axes
import matplotlib.image
import numpy as np
import pytest

from stepjax.train import plot_metrics


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_plot_loss_and_eval_points(tmp_path, monkeypatch):
    jsonl = tmp_path / "metrics.jsonl"
    records = [{"step": s, "loss": 3.0 / s} for s in range(1, 21)]
    records += [{"step": s, "eval/accuracy": s / 20} for s in (5, 10, 20)]
    _write(jsonl, records)

    drawn = []  # (label, xs, ys) of every line drawn, to check what the figure holds
    original = matplotlib.axes.Axes.plot

    def spy(self, *args, **kwargs):
        lines = original(self, *args, **kwargs)
        drawn.extend((ln.get_label(), list(ln.get_xdata()), list(ln.get_ydata())) for ln in lines)
        return lines

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", spy)
    out = plot_metrics(jsonl, tmp_path / "plots" / "loss.png")
    assert out == tmp_path / "plots" / "loss.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(out)
    assert image.shape[:2] == (450, 800) and np.ptp(image[..., :3]) > 0.5  # drawn, not blank
    assert ("loss", list(range(1, 21)), [3.0 / s for s in range(1, 21)]) in drawn
    assert ("eval/accuracy", [5, 10, 20], [0.25, 0.5, 1.0]) in drawn


def test_plot_without_eval_keys_and_with_missing_keys(tmp_path):
    jsonl = tmp_path / "metrics.jsonl"
    _write(jsonl, [{"step": 1, "loss": 1.0, "lr": 0.1}, {"step": 2, "loss": None, "lr": 0.2}])
    assert plot_metrics(jsonl, tmp_path / "a.png").exists()  # no eval/accuracy in the file: loss only
    with pytest.raises(ValueError, match=r"its keys: \['loss', 'lr'\]"):
        plot_metrics(jsonl, tmp_path / "b.png", keys=("mse",), eval_keys=())


def test_shared_axis_puts_eval_points_on_the_lines_axis(tmp_path, monkeypatch):
    """A reward and an accuracy on one 0..1 scale: one axes holds every line; by default the evals get a twin."""
    jsonl = tmp_path / "metrics.jsonl"
    records = [{"step": s, "reward/mean": 0.8 + s / 100} for s in range(1, 11)]
    records += [{"step": s, "eval/accuracy": s / 20} for s in (5, 10)]
    _write(jsonl, records)
    axes_of = {}
    original = matplotlib.axes.Axes.plot

    def spy(self, *args, **kwargs):
        lines = original(self, *args, **kwargs)
        axes_of.update({ln.get_label(): self for ln in lines})
        return lines

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", spy)
    plot_metrics(jsonl, tmp_path / "shared.png", keys=("reward/mean",), shared_axis=True)
    shared = axes_of["reward/mean"]
    assert axes_of["eval/accuracy"] is shared and shared.get_ylim() == (-0.02, 1.02)
    plot_metrics(jsonl, tmp_path / "twin.png", keys=("reward/mean",))
    assert axes_of["eval/accuracy"] is not axes_of["reward/mean"]

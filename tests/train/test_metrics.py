"""MetricWriter (JSONL + TensorBoard), the console progress, and what run_training logs."""

from __future__ import annotations

import io
import json
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import ArrayIterator, build

from stepjax.train import MetricWriter, Progress, read_metrics, run_training


def _tb_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """Scalars of every TFRecord event file under ``logdir`` (tensorboard itself is not installed)."""
    from tensorboardX.proto import event_pb2

    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            for v in event.summary.value:
                out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


def test_writer_jsonl_and_tensorboard(tmp_path):
    with MetricWriter(tmp_path) as w:
        w.write(1, {"loss": 2.5, "acc": 0.25})
        w.write(2, {"loss": float("nan"), "eval/accuracy": 0.5})
    assert [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [
        {"step": 1, "loss": 2.5, "acc": 0.25},
        {"step": 2, "loss": None, "eval/accuracy": 0.5},  # strict JSON: NaN becomes null
    ]
    scalars = _tb_scalars(tmp_path / "tensorboard")
    assert scalars["loss"][0] == (1, 2.5) and scalars["acc"] == [(1, 0.25)] and scalars["eval/accuracy"] == [(2, 0.5)]


def test_writer_on_resume_drops_steps_after_the_resumed_one(tmp_path):
    with MetricWriter(tmp_path) as w:
        for step in range(1, 6):
            w.write(step, {"loss": float(step)})
    with MetricWriter(tmp_path, resume_step=3) as w:
        assert w.dropped == 2
        w.write(4, {"loss": 40.0})
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "metrics.jsonl")] == [
        (1, 1.0),
        (2, 2.0),
        (3, 3.0),
        (4, 40.0),
    ]


def test_writer_is_silent_off_the_main_process(tmp_path):
    with MetricWriter(tmp_path, is_main=False) as w:
        w.write(1, {"loss": 1.0})
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "tensorboard").exists()


def test_progress_plain_lines_when_not_a_tty():
    stream = io.StringIO()
    p = Progress(100, initial=10, tokens_per_step=2048, stream=stream)
    p.start_clock(10)
    p.advance(20)
    rates = p.rates(20)
    assert rates["perf/tokens_per_sec"] == rates["perf/steps_per_sec"] * 2048
    p.log(20, {"loss": 1.23456, **rates})
    p.close()
    (line,) = stream.getvalue().splitlines()
    assert line.startswith("step 20/100 | loss 1.2346 | ") and "steps/s" in line and "tok/s" in line
    assert "eta " in line


def test_progress_bar_on_a_tty():
    stream = io.StringIO()
    p = Progress(50, stream=stream, bar=True)
    for step in range(1, 11):
        p.advance(step)
    p.log(10, {"loss": 0.5})
    p.close()
    text = stream.getvalue()
    assert "10/50" in text and "loss=0.5000" in text


def test_run_training_logs_every_step_it_should(tmp_path):
    _, state, step_fn = build()
    evals = []

    def eval_fn(state, step):
        evals.append(step)
        return {"accuracy": 0.1 * step, "eval/loss": 1.0}

    run_training(
        state,
        step_fn,
        ArrayIterator(),
        tmp_path,
        total_steps=7,
        log_every=2,
        checkpoint_every=3,
        eval_every=3,
        eval_fn=eval_fn,
        tokens_per_batch=64,
        progress_bar=False,
    )
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [2, 3, 4, 6, 7]  # one line per logged step; 7 is the last
    assert evals == [3, 6, 7]
    train_keys = {"loss", "mse", "grad_norm", "param_norm", "lr", "nonfinite"}
    by_step = {r["step"]: r for r in records}
    for step in (2, 4, 6, 7):
        assert train_keys <= set(by_step[step])
    assert "loss" not in by_step[3]
    assert {"perf/steps_per_sec", "perf/tokens_per_sec"} <= set(by_step[4])
    for step in (3, 6, 7):
        assert by_step[step]["eval/accuracy"] == 0.1 * step and by_step[step]["eval/loss"] == 1.0
    assert "eval/accuracy" not in by_step[4]
    scalars = _tb_scalars(tmp_path / "tensorboard")
    assert [s for s, _ in scalars["loss"]] == [2, 4, 6, 7]
    assert [v for _, v in scalars["loss"]] == [float(by_step[s]["loss"]) for s in (2, 4, 6, 7)]

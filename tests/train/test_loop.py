"""run_training: exact resume after SIGKILL, clean exit on SIGTERM, non-finite policies, corrupt checkpoints."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import ArrayIterator, build, leaves

from stepjax.train import (
    CheckpointError,
    CheckpointManager,
    CheckpointMismatchError,
    CorruptCheckpointError,
    NonFiniteLossError,
    abstract_state,
    read_metrics,
    run_training,
)

WORKER = Path(__file__).parent / "loop_worker.py"
REPO = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory) -> Path:
    """A persistent compilation cache shared by the workers of this module (later workers skip compiling)."""
    return tmp_path_factory.mktemp("jax_cache")


def _worker(workdir: Path, cache: Path, *args: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": str(REPO),
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "JAX_COMPILATION_CACHE_DIR": str(cache),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(workdir), *args],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def _restore(workdir: Path, step: int):
    _, state, _ = build()
    with CheckpointManager(workdir / "checkpoints", create=False) as mgr:
        return mgr.restore(step, abstract_state(state))


def test_resume_after_sigkill_reproduces_uninterrupted_run(tmp_path, compile_cache):
    total, kill_at = 10, 6
    ref, run = tmp_path / "ref", tmp_path / "run"
    # The uninterrupted reference and the run that gets killed go side by side.
    ref_proc = _worker(ref, compile_cache, "--total", str(total))
    killed_proc = _worker(run, compile_cache, "--total", str(total), "--kill-at", str(kill_at))
    rc_ref, out_ref, err_ref = _finish(ref_proc)
    rc_killed, _, err_killed = _finish(killed_proc)
    assert rc_ref == 0, err_ref[-3000:]
    assert f"DONE step={total}" in out_ref
    assert rc_killed == -signal.SIGKILL, err_killed[-3000:]
    killed_steps = [r["step"] for r in read_metrics(run / "metrics.jsonl")]
    assert killed_steps == list(range(1, kill_at + 1))

    rc, _, err = _finish(_worker(run, compile_cache, "--total", str(total)))
    assert rc == 0, err[-3000:]
    resumed = int(re.search(r"resumed from step (\d+)", err).group(1))
    # Killed while the async save of step kill_at was in flight: the resume point is kill_at or the one before.
    assert resumed in (kill_at - 1, kill_at)

    ref_records, run_records = read_metrics(ref / "metrics.jsonl"), read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in run_records] == list(range(1, total + 1))  # stale lines dropped, none duplicated
    drop_perf = lambda r: {k: v for k, v in r.items() if not k.startswith("perf/")}
    assert [drop_perf(r) for r in run_records] == [drop_perf(r) for r in ref_records]  # every step, exactly
    assert len({r["loss"] for r in ref_records[resumed:]}) > 1  # the compared losses actually move

    a, b = _restore(ref, total), _restore(run, total)
    assert b.data_state == {"index": total, "seed": 0} and b.metadata["config"] == {"total": total}
    for x, y in zip(leaves(a.state), leaves(b.state), strict=True):
        assert x.dtype == y.dtype and np.array_equal(x, y)  # params, optimizer moments, step, rng: bitwise


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_saves_reached_step_and_exits_zero(tmp_path, compile_cache, sig):
    proc = _worker(tmp_path, compile_cache, "--total", "100000", "--sleep", "0.05", "--checkpoint-every", "0")
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 90
    while time.time() < deadline:
        if metrics.exists() and metrics.read_text().count("\n") >= 3:  # 3 complete lines: step 3 reached
            break
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    proc.send_signal(sig)
    rc, out, err = _finish(proc)
    assert rc == 0, err[-3000:]
    step = int(re.search(r"PREEMPTED step=(\d+)", out).group(1))
    assert step >= 3
    with CheckpointManager(tmp_path / "checkpoints", create=False) as mgr:
        assert mgr.all_steps() == [step]  # checkpoint_every=0: the preemption save is the only one
    restored = _restore(tmp_path, step)
    assert int(restored.state.step) == step and restored.data_state == {"index": step, "seed": 0}
    assert read_metrics(metrics)[-1]["step"] == step


def _run(workdir, total, **kw):
    _, state, step_fn = build()
    it = ArrayIterator(seed=1, poison_steps=kw.pop("poison_steps", ()))
    kw.setdefault("log_every", 1)
    kw.setdefault("checkpoint_every", 1)
    kw.setdefault("keep_checkpoints", 10)
    kw.setdefault("progress_bar", False)
    return run_training(state, kw.pop("step_fn", step_fn), it, workdir, total_steps=total, **kw)


@pytest.mark.parametrize("checkpoint_every,log_every,bad_step,expect_ckpts", [(1, 1, 4, [1, 2, 3]), (2, 5, 3, [2])])
def test_nonfinite_error_names_step_and_never_checkpoints_it(
    tmp_path, checkpoint_every, log_every, bad_step, expect_ckpts
):
    # (2, 5, 3): step 3 is neither logged nor saved, so its flag is read one step late, before step 4 is saved.
    with pytest.raises(NonFiniteLossError, match=rf"step {bad_step}\b") as e:
        _run(tmp_path, 8, poison_steps=(bad_step,), checkpoint_every=checkpoint_every, log_every=log_every)
    assert e.value.step == bad_step
    with CheckpointManager(tmp_path / "checkpoints", create=False) as mgr:
        assert mgr.all_steps() == expect_ckpts
    for step in expect_ckpts:
        restored = _restore(tmp_path, step)
        assert all(np.isfinite(x).all() for x in leaves(restored.state.params))
    last = read_metrics(tmp_path / "metrics.jsonl")[-1]
    assert last["step"] == bad_step and last["loss"] is None and last["nonfinite"] == 1.0


def test_nonfinite_skip_warns_and_continues(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="stepjax.train.loop"):
        state = _run(tmp_path, 8, poison_steps=(3, 5), nonfinite="skip", checkpoint_every=4)
    assert int(state.step) == 8
    assert all(np.isfinite(x).all() for x in leaves(state.params))
    assert "step 3" in caplog.text and "step 5" in caplog.text
    records = {r["step"]: r for r in read_metrics(tmp_path / "metrics.jsonl")}
    assert records[3]["nonfinite"] == 1.0 and records[3]["loss"] is None
    assert records[4]["nonfinite"] == 0.0 and records[4]["loss"] is not None
    assert records[8]["nonfinite_steps"] == 2.0


class _CountingStep:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, state, batch):
        self.calls += 1
        return self.fn(state, batch)


def _corrupt(step_dir: Path, how: str) -> None:
    state_dir = step_dir / "state"
    if how == "delete_metadata":
        (state_dir / "_METADATA").unlink()
    else:  # truncate the merged array data file
        (data_file,) = [p for p in (state_dir / "d").iterdir() if p.is_file()]
        data_file.write_bytes(data_file.read_bytes()[:10])


# A failed read leaves a tensorstore callback that fires on orbax's closed event loop (harmless, orbax-internal).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("how", ["delete_metadata", "truncate_data"])
def test_corrupt_latest_checkpoint(tmp_path, how):
    _run(tmp_path, 3)
    ckpt_dir = tmp_path / "checkpoints"
    _corrupt(ckpt_dir / "3", how)

    _, state, step_fn = build()
    counting = _CountingStep(step_fn)
    with pytest.raises(CorruptCheckpointError) as e:
        _run(tmp_path, 5, step_fn=counting)
    assert isinstance(e.value, CheckpointError)
    assert str(ckpt_dir / "3") in str(e.value) and "[1, 2]" in str(e.value)
    assert counting.calls == 0  # raised before any step (hence before compiling it)
    assert sorted(p.name for p in ckpt_dir.iterdir() if p.name.isdigit()) == ["1", "2", "3"]  # nothing deleted
    with CheckpointManager(ckpt_dir, create=False) as mgr:
        assert int(mgr.restore(2, abstract_state(state)).state.step) == 2

    counting = _CountingStep(step_fn)
    final = _run(tmp_path, 5, step_fn=counting, on_corrupt="previous")
    assert int(final.step) == 5 and counting.calls == 3  # resumed at 2, ran 3, 4, 5
    assert (tmp_path / "checkpoints.corrupt" / "3" / "state").is_dir()  # moved aside, not deleted
    with CheckpointManager(ckpt_dir, create=False) as mgr:
        assert mgr.all_steps() == [1, 2, 3, 4, 5]
        assert int(mgr.restore(3, abstract_state(state)).state.step) == 3  # the re-run step 3 is a fresh save


def test_mismatched_checkpoint_is_not_treated_as_corrupt(tmp_path):
    _run(tmp_path, 2)
    _, wider, step_fn = build(hidden=16)
    with pytest.raises(CheckpointMismatchError, match=r"params\.l1\.kernel\.value: checkpoint \(4, 8\)"):
        run_training(
            wider, step_fn, ArrayIterator(), tmp_path, total_steps=4, on_corrupt="previous", progress_bar=False
        )
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == ["1", "2"]
    assert not (tmp_path / "checkpoints.corrupt").exists()


def test_resume_modes(tmp_path):
    with pytest.raises(CheckpointError, match=re.escape(f"{tmp_path / 'a' / 'checkpoints'} does not exist")):
        _run(tmp_path / "a", 2, resume="required")
    (tmp_path / "a" / "checkpoints").mkdir()
    with pytest.raises(CheckpointError, match=r"no checkpoint to restore in .*restore was requested"):
        _run(tmp_path / "a", 2, resume="required")
    _run(tmp_path / "b", 2)
    with pytest.raises(CheckpointError, match=r"already holds checkpoints \[1, 2\]"):
        _run(tmp_path / "b", 4, resume="never")
    with pytest.raises(ValueError, match="nonfinite='ignore'"):
        _run(tmp_path / "c", 2, nonfinite="ignore")


@pytest.mark.slow
def test_two_processes_resume_each_with_its_own_data_state(tmp_path):
    """2 processes x 2 CPU devices on loopback: a run to step 4, then a resumed run to step 6."""
    mp_worker = Path(__file__).parent / "mp_loop_worker.py"

    def run(total: int) -> list[tuple[dict, str]]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        procs = [
            subprocess.Popen(
                [sys.executable, str(mp_worker), str(pid), str(port), str(tmp_path), str(total)],
                env=env,
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for pid in (0, 1)
        ]
        results = []
        for proc in procs:
            rc, out, err = _finish(proc, timeout=240)
            assert rc == 0, err[-3000:]
            results.append((json.loads(out.split("RESULT ", 1)[1]), err))
        return results

    first = run(4)
    assert [r["data_state"] for r, _ in first] == [{"index": 4, "seed": 10}, {"index": 4, "seed": 11}]
    second = run(6)
    assert "resumed from step 4" in second[0][1]  # the main process prints progress
    assert [r["data_state"] for r, _ in second] == [{"index": 6, "seed": 10}, {"index": 6, "seed": 11}]
    assert second[0][0]["checksum"] == second[1][0]["checksum"]  # one global state
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == list(range(1, 7))

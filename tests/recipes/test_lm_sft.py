"""The lm_sft recipe end to end: it learns, and bad input is named before anything compiles."""

import json
import os
import re
import subprocess
import sys

import pytest
from recipe_cli import REPO, load_config, run_recipe

from recipes import lm_sft
from stepjax.train.config_check import ConfigError


def _config(variant="tiny"):
    return load_config("lm_sft", variant)


def _run_cli(*args, timeout=600):
    return run_recipe(*args, timeout=timeout, devices=2)


def test_every_variant_validates():
    for variant in ("tiny", "small"):
        lm_sft.validate(_config(variant))


def test_unknown_key_in_config_file_is_named():
    config = _config()
    config.unlock()
    config.optimizer.learnig_rate = 1.0
    with pytest.raises(ConfigError, match=r"'config\.optimizer\.learnig_rate'.*learning_rate"):
        lm_sft.validate(config)


def test_wrong_values_are_named():
    config = _config()
    config.train.num_micro_batches = 5
    with pytest.raises(ConfigError, match=r"config\.train\.batch_size.*divisible.*config\.train\.num_micro_batches"):
        lm_sft.validate(config)
    config = _config()
    config.model.num_kv_heads = 3
    with pytest.raises(ConfigError, match=r"config\.model.*num_heads must be a multiple of num_kv_heads"):
        lm_sft.validate(config)
    config = _config()
    config.data.source = "jsonl"
    config.data.path = "/does/not/exist.jsonl"
    with pytest.raises(ConfigError, match=r"'config\.data\.path'.*/does/not/exist\.jsonl"):
        lm_sft.validate(config)


def test_cli_reports_bad_overrides_and_mesh(tmp_path):
    bad_key = _run_cli("--config", "configs/lm_sft.py:tiny", "--config.train.bach_size=3")
    assert bad_key.returncode == 2, bad_key.stderr
    assert "config.train.bach_size" in bad_key.stderr and "batch_size" in bad_key.stderr
    assert "Traceback" not in bad_key.stderr
    bad_mesh = _run_cli(
        "--config", "configs/lm_sft.py:tiny", "--config.mesh.shape.data=3", "--workdir", str(tmp_path / "run")
    )
    assert bad_mesh.returncode == 2, bad_mesh.stderr
    assert "config.mesh.shape" in bad_mesh.stderr and "2 are available" in bad_mesh.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()  # failed before any training


def test_demo_config_learns_arithmetic(tmp_path):
    """The tiny SFT job (the recipe behind the demo's warm-start stage) sharded over the 8 fake devices (data=4,
    fsdp=2): accuracy >= 0.9."""
    config = _config()
    config.mesh.shape.data = 4
    config.mesh.shape.fsdp = 2
    lm_sft.validate(config)
    assert lm_sft.run(config, str(tmp_path)) == 0
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in records if "eval/accuracy" in r][-1]
    assert final["step"] == config.train.total_steps
    assert final["eval/accuracy"] >= 0.9, final
    assert records[0]["loss"] > 1.0 > 0.1 > final["loss"]
    assert (tmp_path / "loss_curve.png").stat().st_size > 1000
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] == config.train.total_steps and len(steps) <= config.checkpoint.keep


def _losses(workdir):
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in lines if "loss" in r}


def test_sigkill_then_resume_reproduces_uninterrupted_run(tmp_path):
    """The real grain pipeline + loop: kill -9 mid-run, rerun the same command, get the same per-step losses."""
    import signal
    import time

    args = [
        "--config",
        "configs/lm_sft.py:tiny",
        "--config.train.total_steps=30",
        "--config.train.log_every=1",
        "--config.checkpoint.every=4",
        "--config.checkpoint.async_save=False",
        "--config.eval.num_examples=4",
        "--config.data.packing=True",
        "--config.train.batch_size=8",
    ]
    straight = _run_cli(*args, "--workdir", str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr[-2000:]

    killed_dir = tmp_path / "killed"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "recipes.run", *args, "--workdir", str(killed_dir)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            metrics = killed_dir / "metrics.jsonl"
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 14:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    reached = max(_losses(killed_dir))
    assert 10 <= reached < 30, reached
    resumed = _run_cli(*args, "--workdir", str(killed_dir))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    start = re.search(r"resumed from step (\d+)", resumed.stdout + resumed.stderr)
    assert start and 4 <= int(start.group(1)) <= reached, (resumed.stdout + resumed.stderr)[-2000:]
    expected, got = _losses(tmp_path / "straight"), _losses(killed_dir)
    assert sorted(got) == list(range(1, 31))
    assert got == expected  # bit-for-bit: same data order, same RNG, same parameters


def test_train_source_and_eval_records_replace_the_config_data(tmp_path):
    """``train(..., train_source=...)`` trains on the caller's records: the same records as the config's give the same
    losses bit for bit, other records other losses; ``eval_records=[]`` runs no evaluation."""
    from stepjax.data import InMemorySource

    config = _config()
    config.train.update(total_steps=2, batch_size=8, log_every=1)
    config.checkpoint.async_save = False

    def losses(name, source):
        status, _, _ = lm_sft.train(config, str(tmp_path / name), train_source=source, eval_records=[])
        assert status == 0
        records = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        assert not any(k.startswith("eval/") for r in records for k in r), records
        return [(r["loss"], r["accuracy"]) for r in records]

    default = losses("default", None)
    same = losses("same", InMemorySource(lm_sft._records(config, "train", config.data.num_train)))
    other = [{"prompt": f"say {i} ", "response": f"{i} {i} {i}!"} for i in range(40)]
    assert same == default
    assert losses("other", InMemorySource(other)) != default


def test_train_unless_preempted_turns_a_sigterm_stop_into_status_0(monkeypatch):
    """A recipe's warm start stopped by SIGTERM (checkpoint saved) returns ``(0, None, None)``; any other outcome of
    ``train`` passes through unchanged, its keyword arguments too."""
    from stepjax.train import Preempted

    def stopped(config, workdir, **kwargs):
        raise Preempted(7, workdir, "SIGTERM")

    monkeypatch.setattr(lm_sft, "train", stopped)
    assert lm_sft.train_unless_preempted(None, "/tmp/x") == (0, None, None)
    monkeypatch.setattr(lm_sft, "train", lambda config, workdir, **kwargs: (3, "graphdef", kwargs))
    assert lm_sft.train_unless_preempted(None, "/tmp/x", eval_records=[]) == (3, "graphdef", {"eval_records": []})

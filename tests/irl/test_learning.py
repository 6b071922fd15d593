"""Learning thresholds (slow; the full 5-seed comparisons are the README commands): PDEIL reaches 95 % of the
expert's normalised return on CartPole and Pendulum within the configured budgets, with no non-finite values."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("variant", ["cartpole_pdeil", "pendulum_pdeil"])
def test_pdeil_reaches_95_percent_of_the_expert(tmp_path, variant):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    args = ["--config", f"configs/pdeil.py:{variant}", "--config.num_seeds=2", "--config.timing.single_seed=False"]
    result = subprocess.run(
        [sys.executable, "-m", "recipes.run", *args, "--workdir", str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    r = json.loads((tmp_path / "results.json").read_text())["results"]["pdeil"]
    assert r["nonfinite"] == 0
    assert r["seeds_reaching_threshold"] == 2, r["eval_returns"]
    assert r["final_normalized_mean"] >= 0.9, r["eval_returns"]

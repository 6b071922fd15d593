"""The irl recipe (configs/pdeil.py): every variant validates, config mistakes are named before compiling, and a
few-step CartPole run writes its demonstrations, table, plot and results (full comparisons are README commands;
the all-algorithm smoke runs are slow-marked)."""

import json
import math
from pathlib import Path

import pytest
from recipe_cli import load_config, run_recipe

from recipes import irl
from stepjax.train.config_check import ConfigError


def _config(variant: str):
    return load_config("pdeil", variant)


def _run_cli(*args, timeout=600):
    # Tiny programs: XLA's optimisation passes cost more than they save (compile time halves at level 0).
    return run_recipe(*args, timeout=timeout, xla_flags="--xla_backend_optimization_level=0", compile_cache=True)


def test_every_variant_validates():
    for env in ("cartpole", "pendulum", "acrobot"):
        for algo in ("pdeil", "gail", "airl", "bc", "compare"):
            config = _config(f"{env}_{algo}")
            irl.validate(config)
            assert tuple(config.algorithms) == (("pdeil", "gail", "airl", "bc") if algo == "compare" else (algo,))
    for variant in ("cartpole_test", "pendulum_test"):
        irl.validate(_config(variant))
    with pytest.raises(ValueError, match="unknown pdeil variant 'cartpole_dqn'"):
        _config("cartpole_dqn")


def test_config_mistakes_are_named():
    config = _config("cartpole_pdeil")
    config.ppo.absorbing_bootstrap = False
    with pytest.raises(ConfigError, match=r"CartPole-v1 ends episodes early.*config\.env\.fixed_horizon"):
        irl.validate(config)
    config.env.fixed_horizon = True
    irl.validate(config)  # a fixed horizon is the other way out
    config = _config("cartpole_pdeil")
    config.pdeil.density = "flow"
    with pytest.raises(ConfigError, match=r"config\.pdeil.*density is 'flow'"):
        irl.validate(config)
    config = _config("cartpole_pdeil")
    config.algorithms = ("pdeil", "dagger")
    with pytest.raises(ConfigError, match=r"config\.algorithms.*dagger"):
        irl.validate(config)
    config = _config("pendulum_gail")
    config.ppo.num_minibatches = 7
    with pytest.raises(ConfigError, match=r"config\.ppo.*num_minibatches"):
        irl.validate(config)
    config = _config("pendulum_gail")
    config.expert.num_envs = 64
    with pytest.raises(ConfigError, match=r"config\.expert\.num_transitions.*156 steps.*200 steps"):
        irl.validate(config)
    config = _config("pendulum_gail")
    config.expert.demos_path = "/nonexistent/demos.npz"
    with pytest.raises(FileNotFoundError, match="demos_path"):
        irl.validate(config)


def test_bad_override_exits_with_status_2(tmp_path):
    result = _run_cli(
        "--config", "configs/pdeil.py:cartpole_test", "--config.pdeil.alpha=1.5", "--workdir", str(tmp_path / "x")
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "alpha must be in [0, 1]" in result.stderr


def _check_run(workdir: Path, algorithms):
    results = json.loads((workdir / "results.json").read_text())
    assert list(results["results"]) == algorithms
    assert (workdir / "returns.png").stat().st_size > 10_000
    table = (workdir / "results.md").read_text()
    for algorithm in algorithms:
        r = results["results"][algorithm]
        assert f"| {algorithm} |" in table
        assert r["nonfinite"] == 0 and r["seeds"] == 2
        assert all(math.isfinite(x) for row in r["eval_returns"] for x in row)
        if algorithm != "bc":
            assert r["env_steps_per_seed"] == 1024 and r["eval_env_steps"] == [0, 512, 1024]
            pearson = r["reward_correlation"]["random"]["pearson"]
            assert len(pearson) == 2 and all(math.isfinite(p) for p in pearson)
    scores = results["scores"]
    assert scores["num_transitions"] == 1000 and scores["expert_episodes"] >= 1
    assert math.isfinite(scores["expert_return"]) and math.isfinite(scores["random_return"])


def test_few_step_cartpole_run_end_to_end(tmp_path):
    workdir = tmp_path / "cartpole"
    args = ["--config", "configs/pdeil.py:cartpole_test", "--config.algorithms=('pdeil', 'bc')"]
    result = _run_cli(*args, "--workdir", str(workdir))
    assert result.returncode == 0, result.stderr[-3000:]
    _check_run(workdir, ["pdeil", "bc"])
    assert (workdir / "demos.npz").is_file() and "training the expert" in result.stdout
    assert "expert_eval_returns" in json.loads((workdir / "expert.json").read_text())
    # A rerun reuses the demonstrations and the finished algorithms.
    again = _run_cli(*args, "--workdir", str(workdir))
    assert again.returncode == 0 and "reusing" in again.stdout and "training the expert" not in again.stdout


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["cartpole_test", "pendulum_test"])
def test_all_algorithms_end_to_end(tmp_path, variant):
    workdir = tmp_path / variant
    result = _run_cli("--config", f"configs/pdeil.py:{variant}", "--workdir", str(workdir))
    assert result.returncode == 0, result.stderr[-3000:]
    _check_run(workdir, ["pdeil", "gail", "airl", "bc"])

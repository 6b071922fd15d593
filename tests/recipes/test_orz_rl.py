"""The orz_rl recipe (configs orz_ppo and grpo): few-step end-to-end runs, resume, and named config errors.

The learning thresholds (held-out accuracy ~0.45 -> ~0.9 for PPO) are checked by the slow test at the bottom;
the default run proves the whole pipeline (warm start, rollouts, rewards, advantages, updates, eval, checkpoints,
plot) runs and logs finite metrics.
"""

import json
import math
from pathlib import Path

import pytest
from recipe_cli import load_config, run_recipe

from recipes import orz_rl
from stepjax.train.config_check import ConfigError


def _config(name: str, variant: str):
    return load_config(name, variant)


def _run_cli(*args, timeout=900):
    return run_recipe(*args, timeout=timeout)


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_reward_fns_override_from_the_command_line(tmp_path):
    # A tuple field can be overridden by a flag (a list field cannot); the override must reach validation.
    proc = _run_cli(
        "--config",
        "configs/orz_ppo.py:test",
        "--config.rl.reward_fns=('orz_math','no_such_reward')",
        "--workdir",
        str(tmp_path / "run"),
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "config.rl.reward_fns" in proc.stderr and "no_such_reward" in proc.stderr
    assert not (tmp_path / "run" / "rl").exists()


@pytest.mark.parametrize("name", ["orz_ppo", "grpo"])
def test_variants_validate(name):
    for variant in ("tiny", "test"):
        orz_rl.validate(_config(name, variant))


def test_decaying_learning_rate_spans_every_optimizer_step():
    """A schedule counts optimizer steps (iterations x mini-batches x epochs), not RL iterations: the cosine reaches
    its floor at the last update, and is still near its peak a quarter of the way through."""
    config = _config("orz_ppo", "tiny")
    config.rl.update(iterations=40, policy_minibatches=4, policy_epochs=2, critic_minibatches=8, critic_epochs=1)
    config.rl.update(lr_schedule="warmup_cosine", end_lr_ratio=0.1, warmup_steps=0)
    (_, policy_lr), (_, critic_lr) = orz_rl.rl_optimizers(config)
    peak, floor = config.rl.policy_learning_rate, 0.1 * config.rl.policy_learning_rate
    assert float(policy_lr(40 * 4 * 2)) == pytest.approx(floor, rel=1e-5)
    assert float(policy_lr(40)) > 0.9 * peak  # 1/8 of the updates: barely decayed
    assert float(critic_lr(40 * 8)) == pytest.approx(0.1 * config.rl.critic_learning_rate, rel=1e-5)
    assert float(critic_lr(160)) == pytest.approx(0.55 * config.rl.critic_learning_rate, rel=1e-3)  # midpoint


def test_bad_rl_settings_are_named():
    config = _config("orz_ppo", "tiny")
    config.rl.critic_minibatches = 7
    with pytest.raises(ConfigError, match=r"config\.rl\.critic_minibatches.*256 rows"):
        orz_rl.validate(config)
    config = _config("orz_ppo", "tiny")
    config.rl.reward_fns = ("orz_math", "no_such_reward")
    with pytest.raises(ConfigError, match=r"config\.rl\.reward_fns.*no_such_reward"):
        orz_rl.validate(config)
    config = _config("orz_ppo", "tiny")
    config.rl.lr_schedule = "step_decay"
    with pytest.raises(ConfigError, match=r"config\.rl\.lr_schedule"):
        orz_rl.validate(config)
    config = _config("orz_ppo", "tiny")
    config.rl.algorithm = "reinforce"
    with pytest.raises(ConfigError, match=r"config\.rl\.algorithm"):
        orz_rl.validate(config)


@pytest.mark.parametrize("name", ["orz_ppo", "grpo"])
def test_few_step_run_end_to_end_and_resume(tmp_path, name):
    workdir = tmp_path / name
    first = _run_cli("--config", f"configs/{name}.py:test", "--config.rl.iterations=2", "--workdir", str(workdir))
    assert first.returncode == 0, first.stderr[-3000:]
    second = _run_cli("--config", f"configs/{name}.py:test", "--workdir", str(workdir))  # 3 iterations: resumes
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from step 2" in (second.stdout + second.stderr)
    records = _records(workdir / "rl" / "metrics.jsonl")
    evals = {r["step"]: r for r in records if "eval/accuracy" in r}
    assert sorted(evals) == [0, 2, 3]  # warm-start score, eval_every=2, the last iteration
    steps = {r["step"]: r for r in records if "reward/mean" in r}
    assert sorted(steps) == [1, 2, 3]
    for r in steps.values():
        clip_key = "policy/clipfrac_avg" if name == "orz_ppo" else "clip_ratio/region_mean"
        for key in ("loss", "reward/mean", "reward/std", "response_length/mean", clip_key, "grad_norm"):
            assert math.isfinite(r[key]), (key, r)
        assert 0.0 <= r["reward/mean"] <= 1.0 and r["nonfinite"] == 0.0
        if name == "orz_ppo":
            assert math.isfinite(r["value_loss"]) and math.isfinite(r["val/explained_variance"])
    assert (workdir / "rl_curve.png").stat().st_size > 1000
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["rl/final_eval"]["step"] == 3


@pytest.mark.slow
def test_tiny_ppo_learns(tmp_path):
    """The tiny ORZ run (the `make demo` job): held-out accuracy (T=1) 0.435 -> 0.905 measured for this seed
    (2026-12-01; seeds 1, 2: 0.51 -> 0.935, 0.45 -> 0.925). The final threshold sits one standard error of the
    200-prompt estimate (~0.02) below the goal of 0.9, so that a numerically different machine does not fail a run
    that learned; the greedy check is what RL must fix (the dropped-carry habit of the warm start)."""
    result = _run_cli("--config", "configs/orz_ppo.py:tiny", "--workdir", str(tmp_path / "run"), timeout=1500)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    first, last = summary["rl/first_eval"], summary["rl/final_eval"]
    assert first["eval/accuracy"] < 0.5
    assert last["eval/accuracy"] >= 0.88 and last["eval/format_rate"] >= 0.95
    assert last["eval/greedy_accuracy"] >= first["eval/greedy_accuracy"] + 0.25  # RL unlearns the dropped carry

"""The dialogue_reason recipe: a seconds-long end-to-end run, named config errors, and the seed/format report."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from recipe_cli import load_config, run_recipe

from recipes import dialogue_reason, dialogue_reason_report
from stepjax.train.config_check import ConfigError


def _config(variant: str):
    return load_config("dialogue_reason", variant)


def _run_cli(*args, timeout=600):
    return run_recipe(*args, timeout=timeout)


def test_variants_validate():
    for variant in ("tiny", "compare", "test"):
        dialogue_reason.validate(_config(variant))
    with pytest.raises(ValueError, match="unknown dialogue_reason variant 'big'"):
        _config("big")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.data.__setattr__("k_wieghts", (1.0,)), r"unknown config key 'config\.data\.k_wieghts'.*k_weights"),
        (lambda c: c.__setattr__("format", "play"), r"'config\.format' is 'play'"),
        (lambda c: c.data.__setattr__("k_weights", (0.2,) * 5), r"k = 5 but 'config\.data\.pool_size' is 4"),
        (lambda c: c.data.__setattr__("k_weights", (0.0, 0.0)), r"'config\.data\.k_weights'"),
        (lambda c: c.data.__setattr__("sources", ("add", "mul")), r"'config\.data\.sources'.*'mul'"),
        (lambda c: c.rl.__setattr__("prompt_width", 64), r"'config\.rl\.prompt_width' \(64\) is below"),
        (lambda c: c.data.__setattr__("seq_len", 256), r"'config\.data\.seq_len' \(256\) is below"),
        (lambda c: c.rl.__setattr__("critic_minibatches", 3), r"'config\.rl\.critic_minibatches' \(3\).*64 rows"),
        (lambda c: c.rl.__setattr__("reward_fns", ("compound_all", "nope")), r"'config\.rl\.reward_fns'.*'nope'"),
        (lambda c: c.compare.__setattr__("seeds", (0, 1)), r"'config\.compare\.seeds' and 'config\.compare\.formats'"),
        (lambda c: c.data.__setattr__("slip", 1.5), r"'config\.data\.slip' \(1\.5\)"),
    ],
)
def test_bad_config_is_named(change, message):
    config = _config("tiny")
    config.unlock()
    change(config)
    with pytest.raises(ConfigError, match=message):
        dialogue_reason.validate(config)


def test_unknown_key_on_the_command_line_exits_2(tmp_path):
    proc = _run_cli(
        "--config", "configs/dialogue_reason.py:test", "--config.format=play", "--workdir", str(tmp_path / "run")
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "config.format" in proc.stderr and "play" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_test_variant_end_to_end(tmp_path):
    workdir = tmp_path / "run"
    proc = _run_cli("--config", "configs/dialogue_reason.py:test", "--workdir", str(workdir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("summary.json", "acc_vs_k.png", "rl_curve.png", "warm_start/metrics.jsonl", "rl/eval_samples.jsonl"):
        assert (workdir / name).exists(), name
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["format"] == "dialogue" and summary["ks"] == [1, 2]
    assert summary["base"]["step"] == 0 and summary["trained"]["step"] == 2
    for stage in ("base", "trained"):
        for mode in ("greedy", "sample"):
            for k in (1, 2):
                for metric in ("acc", "all_acc", "format_rate", "diversity", "coherency"):
                    value = summary[stage][f"{mode}_{metric}_k{k}"]
                    assert math.isfinite(value) and 0.0 <= value <= 1.0, (stage, mode, metric, k, value)
    rows = [json.loads(line) for line in (workdir / "rl" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "reward/mean" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for r in steps:
        for key in ("loss", "value_loss", "reward/compound_all", "reward/compound_format",
                    "reward/compound_diversity_proxy", "response_length/mean"):  # fmt: skip
            assert math.isfinite(r[key]), (key, r)
        assert r["nonfinite"] == 0.0
    samples = [json.loads(line) for line in (workdir / "rl" / "eval_samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 * 2 * 4  # 2 evaluations x 2 modes x (2 prompts per k x 2 ks)
    assert (workdir / "acc_vs_k.png").stat().st_size > 1000


def _fake_summary(root: Path, fmt: str, seed: int, acc: list[float], all_acc: list[float]) -> None:
    stage = {f"greedy_acc_k{k}": a for k, a in zip((1, 2, 3), acc, strict=True)}
    stage.update({f"greedy_all_acc_k{k}": a for k, a in zip((1, 2, 3), all_acc, strict=True)})
    run = root / f"{fmt}_seed{seed}"
    run.mkdir(parents=True)
    summary = {"format": fmt, "seed": seed, "ks": [1, 2, 3], "wall_s": 1.0, "base": stage, "trained": stage}
    (run / "summary.json").write_text(json.dumps(summary))


def test_report_mean_spread_and_pass_check(tmp_path):
    _fake_summary(tmp_path, "dialogue", 0, [0.9, 0.8, 0.7], [0.9, 0.6, 0.4])
    _fake_summary(tmp_path, "dialogue", 1, [0.7, 0.7, 0.7], [0.7, 0.5, 0.3])
    _fake_summary(tmp_path, "monologue", 0, [0.9, 0.5, 0.3], [0.9, 0.3, 0.1])
    _fake_summary(tmp_path, "monologue", 1, [0.9, 0.6, 0.4], [0.9, 0.4, 0.1])
    report = dialogue_reason_report.write_report(str(tmp_path))
    d = report["formats"]["dialogue"]["trained/greedy"]
    np.testing.assert_allclose(d["acc_mean"], [0.8, 0.75, 0.7])
    np.testing.assert_allclose(d["acc_std"], [0.1, 0.05, 0.0], atol=1e-12)  # population std over the 2 seeds
    np.testing.assert_allclose(d["all_acc_mean"], [0.8, 0.55, 0.35])
    assert d["acc_drop_mean"] == pytest.approx(0.1) and d["acc_drop_std"] == pytest.approx(0.1)
    m = report["formats"]["monologue"]["trained/greedy"]
    assert m["acc_drop_mean"] == pytest.approx(0.55)
    assert d["retention_mean"] == pytest.approx((0.7 / 0.9 + 0.7 / 0.7) / 2)
    check = report["pass/trained/greedy"]
    assert check["slower_decay_in_dialogue"] and check["beyond_spread"]  # 0.45 apart, spreads 0.1 + 0.05
    assert check["monologue_retention"] == pytest.approx((0.3 / 0.9 + 0.4 / 0.9) / 2)
    assert (
        "pass/trained/greedy: drop dialogue 0.100 vs monologue 0.550 -> holds (beyond the seed spread)"
        in (tmp_path / "acc_vs_k.md").read_text()
    )
    assert "trained/sample" not in report["formats"]["dialogue"]  # no sampled evaluations in these summaries
    table = (tmp_path / "acc_vs_k.md").read_text()
    assert "| dialogue | trained | greedy | 2 | 0.800 ± 0.100 | 0.750 ± 0.050 | 0.700 ± 0.000 |" in table
    assert (tmp_path / "acc_vs_k.png").stat().st_size > 1000
    with pytest.raises(FileNotFoundError, match="no run summaries"):
        dialogue_reason_report.write_report(str(tmp_path / "empty"))

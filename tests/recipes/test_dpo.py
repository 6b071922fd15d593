"""The dpo recipe (configs/dpo.py): configs validate, bad settings are named, the pair log-probs and loss agree with
a plain per-sequence computation, and a few-step run goes end to end through the CLI (pairs file, reference cache
reused on rerun, resume, finite metrics, curve).

The learning claim (DPO raises the held-out preferred-answer rate) is checked by the slow test at the bottom.
"""

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from recipe_cli import load_config, run_recipe

from recipes import dpo
from stepjax.data import ByteTokenizer, MalformedRecordError
from stepjax.models.llm import DecoderLM, llm_preset
from stepjax.rl.preference_pairs import encode_pairs, read_pairs
from stepjax.rl.rewards import answer_format_reward
from stepjax.train.config_check import ConfigError


def _config(variant: str):
    return load_config("dpo", variant)


def _run_cli(*args, timeout=600):
    return run_recipe(*args, timeout=timeout, compile_cache=True)


def test_variants_validate():
    for variant in ("tiny", "test"):
        dpo.validate(_config(variant))
    with pytest.raises(ValueError, match="unknown dpo variant"):
        _config("huge")


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("loss_type", ("sigmoid", "nope"), r"config\.dpo.*unknown DPO loss_type \['nope'\]"),
        ("loss_type", (), r"config\.dpo\.loss_type' is empty"),
        ("loss_weights", (1.0, 2.0), r"config\.dpo.*loss_weights has 2 entries for 1 loss types"),
        ("loss_type", ("exo_pair",), r"config\.dpo.*exo_pair.*label_smoothing"),
        ("f_divergence", "kl", r"config\.dpo.*unknown f_divergence 'kl'"),
        ("beta", 0.0, r"config\.dpo\.beta' must be > 0"),
    ],
)
def test_bad_dpo_settings_are_named(key, value, message):
    config = _config("tiny")
    config.dpo[key] = value
    with pytest.raises(ConfigError, match=message):
        dpo.validate(config)


def test_bad_pair_and_data_settings_are_named(tmp_path):
    config = _config("tiny")
    config.pairs.samples_per_prompt = 1
    with pytest.raises(ConfigError, match=r"config\.pairs\.samples_per_prompt.*must be >= 2"):
        dpo.validate(config)
    config = _config("tiny")
    config.pairs.reward_fns = ("orz_math", "no_such_reward")
    with pytest.raises(ConfigError, match=r"config\.pairs\.reward_fns.*no_such_reward"):
        dpo.validate(config)
    config = _config("tiny")
    config.data.pairs_path = str(tmp_path / "missing.jsonl")
    with pytest.raises(ConfigError, match=r"config\.data\.pairs_path.*missing\.jsonl"):
        dpo.validate(config)
    bad = tmp_path / "pairs.jsonl"
    bad.write_text('{"prompt": "p", "chosen": "c", "rejected": "r"}\n{"prompt": "p", "chosen": "c"}\n')
    config.data.pairs_path = str(bad)
    with pytest.raises(MalformedRecordError, match=r"pairs\.jsonl:2: field 'rejected'"):
        dpo.validate(config)  # named before any training starts
    config = _config("tiny")
    config.dpo.betta = 0.2
    with pytest.raises(ConfigError, match=r"unknown config key 'config\.dpo\.betta'; did you mean 'config\.dpo\.beta'"):
        dpo.validate(config)


def _tiny_model_and_rows():
    cfg = llm_preset("tiny", vocab_size=259, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, mlp_dim=64)
    model = DecoderLM(cfg, rngs=nnx.Rngs(3))
    pairs = [
        {"prompt": "Q: 12+5=?", "chosen": "<answer>17</answer>", "rejected": "<answer>71</answer> oops"},
        {"prompt": "Q: 1+1=?", "chosen": "2", "rejected": "two"},
        {"prompt": "Q: 40+40=?\nA: ", "chosen": "80", "rejected": ""},  # an empty completion: just EOS
    ]
    rows, _ = encode_pairs(ByteTokenizer(), pairs, 48)
    return model, pairs, rows


def _plain_sum(model, prompt: str, completion: str) -> float:
    """log p(completion EOS | BOS prompt) from an unpadded forward pass of one sequence."""
    tok = ByteTokenizer()
    prompt_ids = [tok.bos_id, *tok.encode(prompt)]
    completion_ids = [*tok.encode(completion), tok.eos_id]
    ids = jnp.asarray([prompt_ids + completion_ids])
    graphdef, state = nnx.split(model)
    logits = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, ids[:, :-1])
    logp = np.asarray(jax.nn.log_softmax(logits, axis=-1))[0]
    return sum(float(logp[len(prompt_ids) - 1 + j, t]) for j, t in enumerate(completion_ids))


def test_sequence_sums_match_plain_forward():
    model, pairs, rows = _tiny_model_and_rows()
    graphdef, params, extra = nnx.split(model, nnx.Param, ...)
    chosen, rejected = dpo._sequence_sums_fn(graphdef)(params, extra, {k: jnp.asarray(v) for k, v in rows.items()})
    for i, pair in enumerate(pairs):
        np.testing.assert_allclose(float(chosen[i]), _plain_sum(model, pair["prompt"], pair["chosen"]), rtol=1e-5)
        np.testing.assert_allclose(float(rejected[i]), _plain_sum(model, pair["prompt"], pair["rejected"]), rtol=1e-5)


def test_loss_fn_is_sigmoid_dpo_on_plain_sums():
    model, pairs, rows = _tiny_model_and_rows()
    ref_c, ref_r = np.array([-40.0, -9.0, -7.5], np.float32), np.array([-35.0, -20.0, -6.0], np.float32)
    batch = {k: jnp.asarray(v) for k, v in rows.items()} | {"ref_chosen": ref_c, "ref_rejected": ref_r}
    config = _config("tiny")
    config.dpo.beta = 0.3
    terms = dpo._dpo_loss_fn(dpo._dpo_kwargs(config))(model, batch, None)
    c = np.array([_plain_sum(model, p["prompt"], p["chosen"]) for p in pairs])
    r = np.array([_plain_sum(model, p["prompt"], p["rejected"]) for p in pairs])
    margin = 0.3 * ((c - ref_c) - (r - ref_r))
    expected = np.mean(np.log1p(np.exp(-margin)))  # -log sigmoid
    np.testing.assert_allclose(float(terms["dpo"].total / terms["dpo"].denominator), expected, rtol=1e-5)
    np.testing.assert_allclose(
        float(terms["rewards/accuracies"].total / terms["rewards/accuracies"].denominator), np.mean(margin > 0)
    )


def _metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_few_step_run_end_to_end_and_reuse(tmp_path):
    workdir = tmp_path / "dpo"
    first = _run_cli("--config", "configs/dpo.py:test", "--config.dpo.steps=2", "--workdir", str(workdir))
    assert first.returncode == 0, first.stderr[-3000:]
    assert "reference log-probs: 0 computed" not in first.stdout

    pairs = read_pairs(workdir / "pairs.jsonl")
    assert pairs
    for line in (workdir / "pairs.jsonl").read_text().splitlines():
        assert set(json.loads(line)) == {"prompt", "chosen", "rejected", "ground_truth"}
    for pair in pairs:  # the test variant ranks by the answer format (its short warm start gets few sums right)
        assert pair["chosen"] != pair["rejected"]
        assert answer_format_reward(pair["chosen"], finish_reason="stop") == 1.0
    cache = workdir / "reference_logps.npz"
    stamp = cache.stat().st_mtime_ns

    second = _run_cli("--config", "configs/dpo.py:test", "--workdir", str(workdir))  # 3 steps: resumes at 2
    assert second.returncode == 0, second.stderr[-3000:]
    out = second.stdout + second.stderr
    assert "resumed from step 2" in out
    assert f"pairs: {len(pairs)} read from" in out
    assert "reference log-probs: 0 computed" in out  # every pair's reference sums came from the cache
    assert cache.stat().st_mtime_ns == stamp

    records = _metrics(workdir / "dpo" / "metrics.jsonl")
    evals = {r["step"]: r for r in records if "eval/accuracy" in r}
    assert sorted(evals) == [0, 2, 3]  # before DPO, eval_every=2, the last step
    for r in evals.values():
        assert 0.0 <= r["eval/accuracy"] <= 1.0 and 0.0 <= r["eval/greedy_accuracy"] <= 1.0
    assert evals[0].get("eval/pair_accuracy", 0.0) == 0.0  # policy = reference: every margin is a tie
    steps = {r["step"]: r for r in records if "dpo" in r}
    assert sorted(steps) == [1, 2, 3]
    for r in steps.values():
        for key in ("loss", "dpo", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected"):
            assert math.isfinite(r[key]), (key, r)
        assert r["nonfinite"] == 0.0 and r["dpo"] > 0
    # Step 1 is the first update from the reference: every implicit reward is 0, the loss is log 2.
    assert steps[1]["dpo"] == pytest.approx(math.log(2.0), abs=1e-4)
    assert (workdir / "dpo_curve.png").stat().st_size > 1000
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["dpo/final_eval"]["step"] == 3 and summary["pairs"] == len(pairs)
    assert "before/accuracy" in summary and "after/accuracy" in summary
    assert "done: step 3; preferred-answer rate" in second.stdout


@pytest.mark.slow
def test_tiny_dpo_raises_preferred_answer_rate(tmp_path):
    """The README's DPO job: the held-out preferred-answer rate (T=1 accuracy) rises clearly, greedy accuracy too,
    without losing the answer format (measured +0.13 and +0.125 T=1, +0.13 and +0.11 greedy for seeds 0 and 1;
    about 2 minutes on an idle 2-core CPU)."""
    result = _run_cli("--config", "configs/dpo.py:tiny", "--workdir", str(tmp_path / "run"), timeout=1500)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["before/accuracy"] < 0.3
    assert summary["after/accuracy"] >= summary["before/accuracy"] + 0.08
    assert summary["after/greedy_accuracy"] >= summary["before/greedy_accuracy"] + 0.05
    assert summary["after/format_rate"] >= summary["before/format_rate"] - 0.05
    assert summary["after/pair_accuracy"] >= 0.7

"""The RL throughput benchmark at a miniature size: TRL's byte tokenizer has ``ByteTokenizer``'s ids, the wrapped
reward is ``orz_math``, and the whole harness runs (same weights on both sides, a parseable RESULT line)."""

import re

import pytest

from benchmarks import rl_throughput as bench
from stepjax.data import ByteTokenizer
from stepjax.rl.rewards import orz_math_reward

pytestmark = pytest.mark.parity


def test_byte_tokenizer_matches_stepjax_ids(tmp_path):
    hf = bench.build_byte_tokenizer(str(tmp_path))
    ours = ByteTokenizer()
    for text in ("Q: 67+34=?\nA: ", "<think>7+4=11</think><answer>\\boxed{101}</answer>", "h\u00e9 \t~\x00\x7f"):
        ids = hf(text)["input_ids"]
        assert ids == [ours.bos_id, *ours.encode(text)]  # BOS first, then one id per UTF-8 byte
        assert hf.decode(ids, skip_special_tokens=True) == text
    assert (hf.pad_token_id, hf.bos_token_id, hf.eos_token_id) == (ours.pad_id, ours.bos_id, ours.eos_id)
    assert (tmp_path / "tokenizer.json").exists()


def test_trl_reward_is_orz_math_with_stop_from_eos():
    good = "<answer>\\boxed{12}</answer>"
    ids_stopped = [*ByteTokenizer().encode(good), 258]
    ids_cut = ByteTokenizer().encode(good)
    got = bench.trl_reward([good, good, "x"], [ids_stopped, ids_cut, [120, 258]], ["12", "12", "12"])
    assert got == [
        orz_math_reward(good, answer="12", finish_reason="stop"),
        orz_math_reward(good, answer="12", finish_reason="length"),
        orz_math_reward("x", answer="12", finish_reason="stop"),
    ]
    assert got == [1.0, 0.0, 0.0]


def test_harness_runs_at_miniature_size(capsys):
    out = bench.main(
        ["--prompts", "2", "--gens", "2", "--max_new", "6", "--minibatches", "2", "--iters", "1", "--trl_iters", "1"]
    )
    assert out["logits_diff"] <= bench.LOGITS_ATOL
    last = capsys.readouterr().out.strip().splitlines()[-1]
    match = re.fullmatch(r"RESULT grpo_vs_trl (\S+) x", last)
    assert match, last
    assert float(match.group(1)) == pytest.approx(out["ratio"], rel=1e-2)
    assert out["stepjax_s"] > 0 and out["trl_s"] > 0

"""Rollout rows: the sampler's log-probs land where a training forward pass computes them; prompt order resumes."""

import jax
import numpy as np
from flax import nnx

from stepjax.data import ByteTokenizer
from stepjax.models.llm import DecoderLM, llm_preset
from stepjax.objectives import token_log_probs
from stepjax.rl.rollout import PromptIterator, collect_rollout, encode_prompts, training_rows
from stepjax.sampling import SamplingConfig


def _model():
    cfg = llm_preset("tiny", vocab_size=259, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, mlp_dim=64)
    return DecoderLM(cfg, rngs=nnx.Rngs(0))


def test_training_rows_layout_by_hand():
    prompts = np.array([[5, 6, 7, 0], [8, 9, 0, 0]], np.int32)
    lengths = np.array([3, 2])
    tokens = np.array([[1, 2, 0], [3, 0, 0], [4, 4, 4], [2, 0, 0]], np.int32)
    gen_len = np.array([2, 1, 3, 1])
    logp = -np.arange(1, 13, dtype=np.float32).reshape(4, 3)
    rows = training_rows(prompts, lengths, 2, tokens, gen_len, logp, pad_id=0)
    # Row 2 = prompt 1 ([8, 9]) + its first sample [4, 4, 4]: full sequence 8 9 4 4 4 0 0.
    np.testing.assert_array_equal(rows["inputs"][2], [8, 9, 4, 4, 4, 0])
    np.testing.assert_array_equal(rows["targets"][2], [9, 4, 4, 4, 0, 0])
    np.testing.assert_array_equal(rows["loss_mask"][2], [0, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(rows["old_logprobs"][2], [0, -7, -8, -9, 0, 0])
    np.testing.assert_array_equal(rows["loss_mask"][0], [0, 0, 1, 1, 0, 0])
    np.testing.assert_array_equal(rows["targets"][0][2:4], [1, 2])


def test_sampler_logprobs_sit_where_the_training_forward_computes_them():
    model = _model()
    graphdef, state = nnx.split(model)
    tok = ByteTokenizer()
    records = [{"prompt": "Q: 1+2=?", "ground_truth": "3"}, {"prompt": "Q: 10+20=?", "ground_truth": "30"}]
    sampling = SamplingConfig(max_new_tokens=8, num_samples=3, stop_tokens=(tok.eos_id,), pad_id=tok.pad_id)
    rollout = collect_rollout(
        graphdef, state, records, tok, sampling, jax.random.key(0), prompt_width=16, reward_fns=("orz_math",)
    )
    batch = rollout.batch
    assert batch["inputs"].shape == (6, 16 + 8 - 1)
    logits = model(batch["inputs"], batch["positions"])
    forward = np.asarray(token_log_probs(logits, batch["targets"]))
    mask = batch["loss_mask"] > 0
    np.testing.assert_allclose(forward[mask], batch["old_logprobs"][mask], atol=1e-5)
    assert mask.sum() == rollout.lengths.sum() > 0
    # Prompt rows repeat per sample, BOS first; rewards are per row.
    prompt_ids, _ = encode_prompts(tok, [r["prompt"] for r in records], 16)
    np.testing.assert_array_equal(batch["inputs"][3, :5], prompt_ids[1, :5])
    assert prompt_ids[0, 0] == tok.bos_id and rollout.scores.shape == (6,)


def test_prompt_iterator_is_deterministic_and_resumes():
    records = [{"i": i} for i in range(10)]
    a = PromptIterator(records, 4, seed=3)
    seen = [[r["i"] for r in next(a)] for _ in range(3)]
    assert sorted(seen[0] + seen[1] + seen[2][:2]) == list(range(10))  # one epoch, then the next begins
    b = PromptIterator(records, 4, seed=3)
    next(b)
    saved = b.get_state()
    c = PromptIterator(records, 4, seed=3)
    c.set_state(saved)
    assert [[r["i"] for r in next(c)] for _ in range(2)] == seen[1:]

"""The KV-cache sampler: stops, budgets, padding, grouping, repetition ban and callbacks on a hand-computable Markov
stand-in model; greedy tokens and log-probs against plain forward passes of a real (tiny) DecoderLM."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from stepjax.models.llm import DecoderLM, llm_preset
from stepjax.sampling import FINISH_LENGTH, FINISH_STOP, SamplingConfig, generate, generate_from_model, pad_prompts
from stepjax.sharding import make_mesh, use_rules
from stepjax.sharding.rules import DEFAULT_RULES

sys.path.insert(0, str(Path(__file__).parent))
from sampling_helpers import full_log_softmax, markov_split, reference_distribution

PAD = 99
V = 8


def _successor_table() -> np.ndarray:
    """From token t, greedy goes to (t + 1) % V (logit 4), then (t + 2) % V (logit 2); the rest 0."""
    table = np.zeros((V, V), np.float32)
    for t in range(V):
        table[t, (t + 1) % V] = 4.0
        table[t, (t + 2) % V] = 2.0
    return table


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x - x.max() - np.log(np.exp(x - x.max()).sum())


def test_stop_tokens_and_budgets_per_row_rows_finish_independently():
    table = _successor_table()
    graphdef, state = markov_split(table)
    prompts, lengths = pad_prompts([[1, 2], [5], [0, 0, 4]], pad_id=0)
    config = SamplingConfig(max_new_tokens=6, greedy=True, pad_id=PAD)
    out = generate(
        graphdef,
        state,
        prompts,
        lengths,
        config,
        jax.random.key(0),
        max_new_tokens=[6, 3, 6],
        stop_tokens=[[5], [], [7, 6]],
    )
    # Hand-derived: row 0 counts 3, 4, 5 and stops at 5; row 1 has budget 3; row 2 stops at 6 (in its set).
    assert np.asarray(out.tokens).tolist() == [
        [3, 4, 5, PAD, PAD, PAD],
        [6, 7, 0, PAD, PAD, PAD],
        [5, 6, PAD, PAD, PAD, PAD],
    ]
    assert np.asarray(out.lengths).tolist() == [3, 3, 2]
    assert np.asarray(out.finish_reason).tolist() == [FINISH_STOP, FINISH_LENGTH, FINISH_STOP]
    step = _log_softmax(table[0])[1]  # every greedy step takes the successor of the last token
    expected_lp = np.where(np.asarray(out.tokens) == PAD, 0.0, step)
    np.testing.assert_allclose(np.asarray(out.logprobs), expected_lp, atol=1e-6)

    # Without stops every row runs its own budget; the config's default stop set applies to all rows.
    out = generate(graphdef, state, prompts, lengths, config.replace(stop_tokens=(7,)), jax.random.key(0))
    assert np.asarray(out.tokens).tolist()[1] == [6, 7] + [PAD] * 4
    assert np.asarray(out.lengths).tolist() == [5, 2, 3]


def test_callback_receives_each_row_once_as_it_finishes():
    graphdef, state = markov_split(_successor_table())
    prompts, lengths = pad_prompts([[1, 2], [5], [0, 0, 4], [3]])
    config = SamplingConfig(max_new_tokens=5, greedy=True, num_samples=2, pad_id=PAD)
    got = []
    out = generate(
        graphdef, state, prompts, lengths, config, jax.random.key(0), max_new_tokens=[4, 1, 2, 5], callback=got.append
    )
    # Rows finish at step = their budget: prompt 1 (rows 2, 3) first, then prompt 2, prompt 0, prompt 3.
    assert [r.row for r in got] == [2, 3, 4, 5, 0, 1, 6, 7]
    assert sorted(r.row for r in got) == list(range(8))
    tokens, lens = np.asarray(out.tokens), np.asarray(out.lengths)
    for r in got:
        assert (r.prompt_index, r.sample_index) == divmod(r.row, 2)
        np.testing.assert_array_equal(r.tokens, tokens[r.row, : lens[r.row]])
        np.testing.assert_allclose(r.logprobs, np.asarray(out.logprobs)[r.row, : lens[r.row]])
        assert r.finish_reason == FINISH_LENGTH


def test_num_samples_rows_are_prompt_major_groups():
    # From t only t+1 and t+2 are possible: each row must continue its own prompt's last token.
    table = np.full((V, V), -1e9, np.float32)
    for t in range(V):
        table[t, (t + 1) % V] = table[t, (t + 2) % V] = 0.0
    graphdef, state = markov_split(table)
    prompts, lengths = pad_prompts([[1], [2, 6], [4, 4, 0]])
    out = generate(
        graphdef, state, prompts, lengths, SamplingConfig(max_new_tokens=12, num_samples=4), jax.random.key(1)
    )
    tokens = np.asarray(out.tokens)
    assert tokens.shape == (12, 12)
    for row in range(12):
        prev = [1, 6, 0][row // 4]
        for t in tokens[row]:
            assert (t - prev) % V in (1, 2), f"row {row} jumped {prev} -> {t}"
            prev = t
    for group in range(3):
        assert len({tuple(r) for r in tokens[group * 4 : group * 4 + 4]}) > 1, "samples of a group are all equal"
    # log p = log 1/2 for every step of every row.
    np.testing.assert_allclose(np.asarray(out.logprobs), np.log(0.5), atol=1e-6)


def test_repetition_ban_hand_written():
    table = np.zeros((V, V), np.float32)
    table[:, 5], table[:, 6] = 3.0, 2.0  # greedy always wants 5, then 6
    graphdef, state = markov_split(table)
    prompts, lengths = pad_prompts([[1, 2, 3, 4], [5]])
    banned = SamplingConfig(max_new_tokens=8, greedy=True, repetition_window=4, repetition_count=2)
    out = np.asarray(generate(graphdef, state, prompts, lengths, banned, jax.random.key(0)).tokens)
    # Row 0: windows [1,2,3,4] [2,3,4,5] ok -> 5, 5; [3,4,5,5] bans 5 -> 6; [4,5,5,6] -> 5; [5,5,6,5] bans 5 -> 6;
    # [5,6,5,6] bans 6 -> 5; [6,5,6,5] bans 5 -> 6; [5,6,5,6] bans 6 -> 5.
    assert out[0].tolist() == [5, 5, 6, 5, 6, 5, 6, 5]
    # Row 1 (prompt of 1 token): no ban until the row holds 4 tokens, then [5,5,5,5] bans 5.
    assert out[1].tolist() == [5, 5, 5, 6, 5, 6, 5, 6]
    free = np.asarray(generate(graphdef, state, prompts, lengths, banned.replace(repetition_window=0), None).tokens)
    assert (free == 5).all()


def test_bad_inputs_are_named():
    graphdef, state = markov_split(_successor_table())
    prompts, lengths = pad_prompts([[1, 2], [5]])
    config = SamplingConfig(max_new_tokens=4)
    with pytest.raises(ValueError, match="prompt_lengths"):
        generate(graphdef, state, prompts, np.array([0, 1]), config, jax.random.key(0))
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(graphdef, state, prompts, lengths, config, jax.random.key(0), max_new_tokens=[5, 1])
    with pytest.raises(ValueError, match="stop_tokens"):
        generate(graphdef, state, prompts, lengths, config, jax.random.key(0), stop_tokens=[[1], [2], [3]])


# ------------------------------------------------------------------------------------- a real tiny model

VOCAB = 64
PROMPTS = [[3, 9, 27, 17], [5], [8, 1, 44, 2, 2, 60, 7], [11, 12]]


def _model(**overrides):
    base = dict(
        vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=64, initializer_range=0.3
    )
    return DecoderLM(llm_preset("tiny", **{**base, **overrides}), rngs=nnx.Rngs(4))


def _reference_greedy(graphdef, state, prompts, steps):
    """Argmax of full forward passes, one token at a time (fixed width: causal, so right padding is inert)."""
    width = max(len(p) for p in prompts) + steps
    seqs = [list(p) for p in prompts]
    for _ in range(steps):
        buf = np.zeros((len(seqs), width), np.int32)
        for i, s in enumerate(seqs):
            buf[i, : len(s)] = s
        logp = full_log_softmax(graphdef, state, buf)
        for i, s in enumerate(seqs):
            s.append(int(np.argmax(logp[i, len(s) - 1])))
    return [s[len(p) :] for s, p in zip(seqs, prompts, strict=True)]


@pytest.mark.parametrize("scan", [False, True], ids=["unrolled", "scan"])
def test_greedy_equals_full_forward_argmax(scan):
    model = _model(scan_layers=scan, position="sqrt_alibi" if scan else "rope")
    graphdef, state = nnx.split(model)
    got = generate_from_model(model, PROMPTS, SamplingConfig(max_new_tokens=7, greedy=True), jax.random.key(0))
    assert got == _reference_greedy(graphdef, state, PROMPTS, 7)


def test_logprobs_equal_training_forward():
    model = _model()
    graphdef, state = nnx.split(model)
    params = dict(temperature=0.9, top_k=20, top_p=0.95, min_p=0.02)
    config = SamplingConfig(max_new_tokens=8, num_samples=2, processed_logprobs=True, **params)
    prompts, lengths = pad_prompts(PROMPTS)
    out = generate(graphdef, state, prompts, lengths, config, jax.random.key(7))
    tokens, lp, plp = (np.asarray(x) for x in (out.tokens, out.logprobs, out.processed_logprobs))
    assert (np.asarray(out.lengths) == 8).all()
    seqs = np.zeros((8, 16), np.int32)
    for row in range(8):
        p = PROMPTS[row // 2]
        seqs[row, : len(p)] = p
        seqs[row, len(p) : len(p) + 8] = tokens[row]
    ref = full_log_softmax(graphdef, state, seqs)
    for row in range(8):
        start = len(PROMPTS[row // 2]) - 1
        for i, tok in enumerate(tokens[row]):
            np.testing.assert_allclose(lp[row, i], ref[row, start + i, tok], atol=1e-5, rtol=0)
            dist = reference_distribution(ref[row, start + i], **params)
            assert dist[tok] > 0, "sampled a token the processors exclude"
            np.testing.assert_allclose(plp[row, i], np.log(dist[tok]), atol=1e-5, rtol=0)


def test_sharded_generation_matches_unsharded(devices):
    model = _model()
    graphdef, state = nnx.split(model)
    prompts, lengths = pad_prompts(PROMPTS)
    config = SamplingConfig(max_new_tokens=5, num_samples=2, temperature=0.8)
    plain = generate(graphdef, state, prompts, lengths, config, jax.random.key(2))
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    with jax.set_mesh(mesh), use_rules(DEFAULT_RULES):
        sharded = generate(graphdef, state, jnp.asarray(prompts), lengths, config, jax.random.key(2))
    np.testing.assert_array_equal(np.asarray(sharded.tokens), np.asarray(plain.tokens))
    np.testing.assert_allclose(np.asarray(sharded.logprobs), np.asarray(plain.logprobs), atol=1e-5)

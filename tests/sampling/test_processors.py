"""Sampling rules: the processed distributions equal independent references, and 10k draws follow them.

Statistical bound: for an empirical distribution of ``n`` draws over ``k`` outcomes, Weissman et al. (2003) give
``P(||p_hat - p||_1 >= eps) <= (2^k - 2) exp(-n eps^2 / 2)``. With ``k = 8``, ``n = 10_000`` and a total-variation
threshold of 0.03 (``eps = 0.06``) that is ``254 * exp(-18) < 4e-6`` per check, so a correct sampler essentially
never fails (and the seeds are fixed, so the test is deterministic). A wrong rule moves far more mass: every
token in the logits below holds >= 2% of the raw mass and far more after renormalisation, and the cut-offs are
>= 0.05 away from the thresholds, so keeping or dropping a single extra token changes the distribution by > 0.03.
"""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stepjax.sampling import SamplingConfig, ban_repetition, choose, warp

sys.path.insert(0, str(Path(__file__).parent))
from sampling_helpers import reference_distribution, softmax, step_audio_ban

DRAWS = 10_000
TV_BOUND = 0.03
PROBS = np.array([0.10, 0.30, 0.02, 0.15, 0.07, 0.20, 0.04, 0.12])  # shuffled so rank != index
LOGITS = np.log(PROBS).astype(np.float32) + 1.7  # an offset: only differences matter

CASES = {
    "temperature": dict(temperature=0.7),
    "temperature_hot": dict(temperature=1.8),
    "top_k": dict(top_k=3),  # keeps 0.30, 0.20, 0.15
    "top_p": dict(top_p=0.6),  # mass above: 0, .30, .50 -> keep 3; the 4th has .65 above
    "min_p": dict(min_p=0.3),  # keep p >= 0.09: five tokens
    "all": dict(temperature=1.3, top_k=6, top_p=0.85, min_p=0.2),
}


@pytest.mark.parametrize("name", list(CASES))
def test_processed_distribution_and_draws(name):
    params = CASES[name]
    config = SamplingConfig(**params)
    expected = reference_distribution(LOGITS, **params)
    if name.startswith("temperature"):
        assert np.all(expected > 0)
    else:
        assert 2 <= np.sum(expected > 0) < len(PROBS), "the case must exclude something and keep a choice"

    processed = np.asarray(warp(jnp.asarray(LOGITS)[None], config))[0]
    np.testing.assert_array_equal(np.isfinite(processed), expected > 0)
    np.testing.assert_allclose(softmax(processed), expected, atol=1e-6)

    rows = jnp.broadcast_to(jnp.asarray(LOGITS), (DRAWS, len(PROBS)))
    tokens, _ = choose(jax.random.key(11), rows, config)
    counts = np.bincount(np.asarray(tokens), minlength=len(PROBS))
    assert counts[expected == 0].sum() == 0, f"excluded tokens drawn: {counts}"
    tv = 0.5 * np.abs(counts / DRAWS - expected).sum()
    assert tv < TV_BOUND, f"total variation {tv:.4f} >= {TV_BOUND} ({counts} vs {expected})"


def test_rows_draw_independently():
    # Two rows with different logits in one call: each follows its own distribution.
    other = np.log(np.array([0.5, 0.5, 1e-9, 1e-9, 1e-9, 1e-9, 1e-9, 1e-9])).astype(np.float32)
    rows = jnp.asarray(np.stack([LOGITS, other] * (DRAWS // 2)))
    tokens = np.asarray(choose(jax.random.key(3), rows, SamplingConfig())[0]).reshape(-1, 2)
    first = np.bincount(tokens[:, 0], minlength=8) / (DRAWS // 2)
    assert 0.5 * np.abs(first - PROBS).sum() < 2 * TV_BOUND  # n = 5000, eps = 0.12: bound 254 exp(-36)
    assert set(np.unique(tokens[:, 1])) <= {0, 1}
    assert 0.45 < np.mean(tokens[:, 1] == 0) < 0.55


def test_top_k_keeps_ties_and_top_p_keeps_the_top_token():
    tied = jnp.asarray([[1.0, 1.0, 1.0, 0.0]])
    assert np.isfinite(np.asarray(warp(tied, SamplingConfig(top_k=2)))).tolist() == [[True, True, True, False]]
    peaked = jnp.asarray([[5.0, 0.0, 0.0, 0.0]])
    kept = np.isfinite(np.asarray(warp(peaked, SamplingConfig(top_p=0.01))))
    assert kept.tolist() == [[True, False, False, False]]


def test_greedy_is_first_argmax_and_ignores_warpers():
    logits = jnp.asarray([[0.0, 3.0, 3.0, 1.0], [2.0, -1.0, 0.0, 1.9]])
    config = SamplingConfig(greedy=True, temperature=0.1, top_k=1, top_p=0.1)
    tokens, dist = choose(jax.random.key(0), logits, config)
    assert np.asarray(tokens).tolist() == [1, 0]
    np.testing.assert_array_equal(np.asarray(dist), np.asarray(logits))
    assert SamplingConfig(temperature=0.0).is_greedy


def test_repetition_ban_hand_cases():
    vocab = 10
    logits = jnp.zeros((5, vocab))
    recent = jnp.asarray(
        [
            [7, 3, 5, 3],  # last 3 occurs twice -> banned
            [3, 7, 5, 3],  # twice, further apart -> banned
            [1, 2, 5, 3],  # once -> nothing
            [-1, 3, 3, 3],  # row shorter than the window -> nothing (Step-Audio waits for a full window)
            [4, 4, 4, 4],  # four times -> banned
        ]
    )
    seq_len = jnp.asarray([6, 9, 9, 3, 4])
    out = np.asarray(ban_repetition(logits, recent, seq_len, window=4, count=2))
    banned = ~np.isfinite(out)
    assert [np.flatnonzero(r).tolist() for r in banned] == [[3], [3], [], [], [4]]
    out3 = np.asarray(ban_repetition(logits, recent, seq_len, window=4, count=3))
    assert [np.flatnonzero(~np.isfinite(r)).tolist() for r in out3] == [[], [], [], [], [4]]


def test_repetition_ban_matches_step_audio_rule_on_random_sequences():
    rng = np.random.default_rng(0)
    vocab, window = 6, 10
    outcomes = set()
    for _ in range(50):
        seq = rng.integers(0, vocab, rng.integers(1, 25)).tolist()
        padded = [-1] * max(0, window - len(seq)) + seq[-window:]
        out = ban_repetition(
            jnp.zeros((1, vocab)), jnp.asarray([padded]), jnp.asarray([len(seq)]), window=window, count=2
        )
        expected = step_audio_ban(seq, vocab)
        np.testing.assert_array_equal(~np.isfinite(np.asarray(out)[0]), expected)
        outcomes.add(bool(expected.any()))
    assert outcomes == {True, False}


def test_config_rejects_bad_values():
    for bad in (dict(top_p=0.0), dict(top_k=-1), dict(temperature=-1.0), dict(min_p=1.5), dict(num_samples=0)):
        with pytest.raises(ValueError, match="SamplingConfig"):
            SamplingConfig(**bad)

"""GAE (token sequences with packing and masks; environment rollouts with dones), whitening, group advantages, each
against a plain numpy loop or a closed form."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from stepjax.rl.advantages import gae_advantages, gae_env, group_advantages, terminal_rewards, whiten
from stepjax.rl.registry import ADVANTAGES


def _gae_loop(rewards, values, gamma, lam):
    """Textbook GAE over one trajectory that ends in a terminal state."""
    adv, running = np.zeros(len(rewards)), 0.0
    for t in reversed(range(len(rewards))):
        next_v = values[t + 1] if t + 1 < len(rewards) else 0.0
        running = rewards[t] + gamma * next_v - values[t] + gamma * lam * running
        adv[t] = running
    return adv


def _packed_batch(seed=0, batch=4, length=20):
    """Rows holding 1-3 samples; each sample = prompt tokens (mask 0) then response tokens (mask 1), padding after;
    some masked-out tokens inside responses (e.g. tool output) to be skipped."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((batch, length), np.float32)
    seg = np.zeros((batch, length), np.int32)
    for b in range(batch):
        pos = 0
        for s in range(1, int(rng.integers(1, 4)) + 1):
            prompt, resp = int(rng.integers(1, 3)), int(rng.integers(2, 5))
            if pos + prompt + resp > length:
                break
            seg[b, pos : pos + prompt + resp] = s
            mask[b, pos + prompt : pos + prompt + resp] = 1.0
            if resp > 2 and rng.random() < 0.5:
                mask[b, pos + prompt + 1] = 0.0  # a skipped token inside the response
            pos += prompt + resp
    rewards = rng.normal(size=(batch, length)).astype(np.float32)
    values = rng.normal(size=(batch, length)).astype(np.float32)
    return rewards, values, mask, seg


def _token_reference(rewards, values, mask, seg, gamma, lam):
    adv, ret = np.zeros_like(rewards), np.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        for s in np.unique(seg[b][seg[b] > 0]):
            idx = np.where((seg[b] == s) & (mask[b] > 0))[0]
            a = _gae_loop(rewards[b, idx], values[b, idx], gamma, lam)
            adv[b, idx], ret[b, idx] = a, a + values[b, idx]
    return adv, ret


@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 1.0), (0.99, 0.95), (0.9, 0.5), (1.0, 0.0)])
def test_token_gae_matches_numpy_loop_with_pack_boundaries(gamma, lam):
    rewards, values, mask, seg = _packed_batch()
    adv, ret = jax.jit(gae_advantages)(rewards, values, mask, gamma=gamma, lam=lam, segment_ids=seg)
    want_adv, want_ret = _token_reference(rewards, values, mask, seg, gamma, lam)
    np.testing.assert_allclose(adv, want_adv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ret, want_ret, rtol=1e-5, atol=1e-5)


def test_unpacked_rows_reset_at_row_end():
    rewards, values, mask, _ = _packed_batch(seed=1)
    rows = (mask.cumsum(-1) > 0).astype(np.int32)  # one "segment" per row covering everything up to the end
    adv, _ = gae_advantages(rewards, values, mask, gamma=0.97, lam=0.9)
    want, _ = _token_reference(rewards, values, mask, rows, 0.97, 0.9)
    np.testing.assert_allclose(adv, want, rtol=1e-5, atol=1e-5)


def test_lambda_gamma_one_terminal_reward_is_return_minus_value():
    # ORZ: gamma = lam = 1, one terminal reward R on each sample's last response token => A_t = R - V_t, G_t = R.
    _, values, mask, seg = _packed_batch(seed=2)
    rng = np.random.default_rng(2)
    scores = rng.integers(0, 2, size=(mask.shape[0], mask.shape[1])).astype(np.float32)  # R per (row, segment slot)
    rewards = np.asarray(terminal_rewards(scores, mask, seg))
    adv, ret = gae_advantages(rewards, values, mask, gamma=1.0, lam=1.0, segment_ids=seg)
    r_tok = np.take_along_axis(scores, np.maximum(seg - 1, 0), axis=1) * mask
    np.testing.assert_allclose(ret, r_tok, atol=1e-6)
    np.testing.assert_allclose(adv, (r_tok - values) * mask, atol=1e-6)
    # terminal_rewards put exactly one reward per sample, on its last valid token.
    for b in range(mask.shape[0]):
        for s in np.unique(seg[b][seg[b] > 0]):
            idx = np.where((seg[b] == s) & (mask[b] > 0))[0]
            assert rewards[b, idx[-1]] == scores[b, s - 1] and np.all(rewards[b, idx[:-1]] == 0)


@pytest.mark.parametrize(("gamma", "lam"), [(0.99, 0.95), (1.0, 1.0)])
def test_env_gae_matches_numpy_loop_with_dones(gamma, lam):
    rng = np.random.default_rng(3)
    steps, envs = 12, 5
    rewards = rng.normal(size=(steps, envs)).astype(np.float32)
    values = rng.normal(size=(steps, envs)).astype(np.float32)
    dones = (rng.random((steps, envs)) < 0.2).astype(np.float32)
    dones[-1, 0] = 1.0  # one env terminates on the last step (no bootstrap), others bootstrap
    last_value = rng.normal(size=envs).astype(np.float32)
    adv, ret = jax.jit(gae_env)(rewards, values, dones, last_value, gamma=gamma, lam=lam)
    want = np.zeros_like(rewards)
    running = np.zeros(envs)
    for t in reversed(range(steps)):
        next_v = last_value if t == steps - 1 else values[t + 1]
        nonterminal = 1.0 - dones[t]
        delta = rewards[t] + gamma * next_v * nonterminal - values[t]
        running = delta + gamma * lam * nonterminal * running
        want[t] = running
    np.testing.assert_allclose(adv, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ret, want + values, rtol=1e-5, atol=1e-5)


def test_whiten_over_valid_tokens():
    rng = np.random.default_rng(4)
    x = rng.normal(3.0, 2.0, size=(3, 7)).astype(np.float32)
    mask = (rng.random((3, 7)) < 0.7).astype(np.float32)
    out = np.asarray(whiten(x, mask))
    v = x[mask > 0]
    np.testing.assert_allclose(out[mask > 0], (v - v.mean()) / np.sqrt(max(v.var(), 1e-8)), rtol=1e-5, atol=1e-5)
    assert np.all(out[mask == 0] == 0)
    # Constant advantages: the variance floor keeps the result finite (all zeros).
    assert np.all(np.asarray(whiten(np.ones_like(x), mask)) == 0)


def test_group_advantages_scales_and_baselines():
    rng = np.random.default_rng(5)
    g = 4
    r = rng.integers(0, 3, size=12).astype(np.float32)
    groups = r.reshape(-1, g)
    centred = groups - groups.mean(1, keepdims=True)
    got = np.asarray(group_advantages(r, g))
    np.testing.assert_allclose(got, (centred / (groups.std(1, ddof=1, keepdims=True) + 1e-4)).ravel(), rtol=1e-5)
    got = np.asarray(group_advantages(r, g, scale="batch", ddof=0, eps=1e-6))
    np.testing.assert_allclose(got, (centred / (r.std() + 1e-6)).ravel(), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(ADVANTAGES.get("dr_grpo")(r, g)), centred.ravel(), rtol=1e-6)
    loo = np.array([[x - np.delete(row, i).mean() for i, x in enumerate(row)] for row in groups]).ravel()
    np.testing.assert_allclose(np.asarray(ADVANTAGES.get("rloo")(r, g)), loo, rtol=1e-5, atol=1e-6)
    # Equal rewards in a group: zero advantages, not NaN.
    np.testing.assert_array_equal(np.asarray(group_advantages(np.ones(8, np.float32), 4)), np.zeros(8))
    with pytest.raises(ValueError, match="multiple of group_size 5"):
        group_advantages(r, 5)

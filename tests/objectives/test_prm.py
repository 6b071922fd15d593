"""PRM objective: per-step BCE at separator positions against a float64 hand computation (with the minus sign that
the paper's Eq. 1 drops), last-step-only masks (rows and packed segments), exactness under micro-batching."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stepjax.objectives.prm import last_step_mask, prm_loss
from stepjax.objectives.registry import get_loss

B, L = 6, 12


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, (B, L)).astype(np.float32)
    labels = rng.integers(0, 2, (B, L)).astype(np.int32)
    step_mask = (rng.random((B, L)) < 0.4).astype(np.float32)
    step_mask[0] = 0.0  # a row without any step
    return logits, labels, step_mask


def _bce64(logits, labels):
    p = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    return -(labels * np.log(p) + (1 - labels) * np.log(1 - p))  # positive: the minus sign Eq. 1 drops


def test_bce_matches_hand_computation():
    logits, labels, mask = _batch()
    terms = prm_loss(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(mask))
    want = (_bce64(logits, labels) * mask).sum() / mask.sum()
    np.testing.assert_allclose(float(terms["prm"].value), want, rtol=1e-6)
    assert float(terms["prm"].value) > 0
    assert float(terms["prm"].denominator) == mask.sum()
    acc = (((logits > 0) == (labels == 1)) * mask).sum() / mask.sum()
    np.testing.assert_allclose(float(terms["prm/accuracy"].value), acc, rtol=1e-6)
    assert get_loss("prm") is prm_loss
    # sequence_mean: every solution (row) weighs the same
    seq = prm_loss(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(mask), aggregation="sequence_mean")
    bce = _bce64(logits, labels) * mask
    rows = [bce[b].sum() / mask[b].sum() for b in range(B) if mask[b].sum() > 0]
    np.testing.assert_allclose(float(seq["prm"].value), np.mean(rows), rtol=1e-6)


def test_extreme_logits_stay_finite():
    logits = jnp.asarray([[80.0, -80.0, 80.0, -80.0]])
    labels = jnp.asarray([[1, 0, 0, 1]])
    terms = prm_loss(logits, labels, jnp.ones((1, 4)))
    np.testing.assert_allclose(float(terms["prm"].total), 160.0, rtol=1e-6)  # two exact hits, two misses of 80


def test_last_step_only():
    logits, labels, mask = _batch(1)
    terms = prm_loss(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(mask), train_on_last_step_only=True)
    last = np.zeros_like(mask)
    for b in range(B):
        idx = np.flatnonzero(mask[b])
        if idx.size:
            last[b, idx[-1]] = 1.0
    np.testing.assert_array_equal(np.asarray(last_step_mask(jnp.asarray(mask))), last)
    want = (_bce64(logits, labels) * last).sum() / last.sum()
    np.testing.assert_allclose(float(terms["prm"].value), want, rtol=1e-6)


def test_last_step_per_packed_segment():
    mask = np.asarray([[1, 0, 1, 1, 0, 1, 0, 1, 0, 0]], np.float32)
    seg = np.asarray([[1, 1, 1, 2, 2, 2, 3, 3, 0, 0]], np.int32)
    got = np.asarray(last_step_mask(jnp.asarray(mask), jnp.asarray(seg)))
    np.testing.assert_array_equal(got, [[0, 0, 1, 0, 0, 1, 0, 1, 0, 0]])


@pytest.mark.parametrize("aggregation", ["token_mean", "sequence_mean"])
@pytest.mark.parametrize("last_only", [False, True])
def test_micro_batches_sum_to_the_big_batch(aggregation, last_only):
    logits, labels, mask = (jnp.asarray(x) for x in _batch(2))

    def terms(lo, la, ma):
        return prm_loss(lo, la, ma, aggregation=aggregation, train_on_last_step_only=last_only)["prm"]

    big = terms(logits, labels, mask)
    parts = [terms(logits[i::3], labels[i::3], mask[i::3]) for i in range(3)]
    total, den = sum(p.total for p in parts), sum(p.denominator for p in parts)
    np.testing.assert_allclose(float(total / den), float(big.value), rtol=1e-6)
    # gradients: sum_k grad(total_k) / D equals the big-batch gradient
    g_big = jax.grad(lambda lo: terms(lo, labels, mask).value)(logits)
    g_parts = [jax.grad(lambda lo, i=i: terms(lo, labels[i::3], mask[i::3]).total)(logits[i::3]) for i in range(3)]
    g = jnp.zeros_like(logits)
    for i, gp in enumerate(g_parts):
        g = g.at[i::3].set(gp / den)
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_big), rtol=1e-5, atol=1e-7)

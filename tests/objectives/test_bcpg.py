"""BCPG / BCPG-NSA objective: a hand-computed case, beta = 1 against an independent numpy BCPG (value and gradient),
the constraint and its gradient vanish at theta = ref, the beta mask acts only on correct steps of negatives, exact
micro-batch accumulation, the gradient's sign on correct steps inside negatives, named errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stepjax.objectives import get_loss
from stepjax.objectives.bcpg import bcpg_loss, group_mean_baselines

B, L, G = 8, 7, 4  # two groups of four responses


def _data(seed=0):
    rng = np.random.default_rng(seed)
    mask = np.zeros((B, L), np.float32)
    for i in range(B):
        start, stop = rng.integers(0, 2), rng.integers(3, L + 1)
        mask[i, start:stop] = 1.0
    logp = -rng.uniform(0.1, 2.0, (B, L)).astype(np.float32)
    ref = (logp + rng.normal(0, 0.3, (B, L))).astype(np.float32)
    rewards = np.array([1, 0, 0, 1, 0, 0, 0, 1], np.float32)
    groups = np.repeat(np.arange(B // G), G).astype(np.int32)
    steps = (rng.random((B, L)) < 0.5).astype(np.float32)
    return logp, ref, mask, rewards, groups, steps


def _numpy_bcpg(logp, ref, mask, rewards, groups, tau):
    """Eq. 6-7 with beta = 1, written out independently: loops over groups and responses, float64."""
    logp, ref, mask = (np.asarray(x, np.float64) for x in (logp, ref, mask))
    total, count = 0.0, 0
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        r_bar = rewards[members].mean()
        for i in members:
            m = mask[i] > 0
            seq = logp[i][m].sum() - ref[i][m].sum()
            total += ((rewards[i] - r_bar) * logp[i][m].sum() - tau / 2 * seq**2) / m.sum()
            count += 1
    return -total / count


def _numpy_bcpg_grad(logp, ref, mask, rewards, groups, tau):
    """d loss / d log_probs of ``_numpy_bcpg``: (-A_i + tau * seq_ratio_i) / (|y_i| N) on response tokens."""
    grad = np.zeros_like(logp, np.float64)
    for i in range(B):
        members = groups == groups[i]
        adv = rewards[i] - rewards[members].mean()
        m = mask[i] > 0
        seq = logp[i][m].sum() - ref[i][m].sum()
        grad[i] = (-adv + tau * seq) / m.sum() / B * mask[i]
    return grad


def _loss(logp, ref, mask, rewards, groups, steps=None, **kw):
    terms = bcpg_loss(logp, ref, mask, rewards, positive_step_mask=steps, group_ids=groups, **kw)
    return terms["bcpg"].value


def test_beta_one_equals_independent_bcpg_value_and_gradient():
    logp, ref, mask, rewards, groups, steps = _data()
    tau = 0.3  # large enough that the constraint matters in the comparison
    want = _numpy_bcpg(logp, ref, mask, rewards, groups, tau)
    # beta = 1 with any step mask is BCPG: the marks then carry weight 1 like every other token.
    got = _loss(logp, ref, mask, rewards, groups, steps, beta=1.0, tau=tau)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    grad = jax.grad(lambda x: _loss(x, ref, mask, rewards, groups, steps, beta=1.0, tau=tau))(logp)
    np.testing.assert_allclose(np.asarray(grad), _numpy_bcpg_grad(logp, ref, mask, rewards, groups, tau), atol=1e-6)
    assert get_loss("bcpg") is bcpg_loss


def test_hand_computed_case():
    # One group: y1 right (2 tokens), y2 wrong (3 tokens, its first two tokens a correct step). r_bar = 0.5.
    logp = np.array([[-1.0, -2.0, 0.0], [-0.5, -1.0, -1.5]], np.float32)
    ref = np.array([[-1.0, -2.0, 0.0], [-0.5, -0.5, -1.0]], np.float32)  # log-ratios 0 and -1
    mask = np.array([[1, 1, 0], [1, 1, 1]], np.float32)
    steps = np.array([[0, 0, 0], [1, 1, 0]], np.float32)
    rewards = np.array([1.0, 0.0], np.float32)
    terms = bcpg_loss(
        logp, ref, mask, rewards, positive_step_mask=steps, group_ids=np.zeros(2, np.int32), beta=0.5, tau=0.1
    )
    # y1: -(0.5 * -1 + 0.5 * -2) / 2 = 0.75.  y2: -(0.5*-0.5*-0.5 + 0.5*-0.5*-1 + 1*-0.5*-1.5) + 0.05*1 = -1.075; / 3.
    np.testing.assert_allclose(float(terms["bcpg"].value), (0.75 - 1.075 / 3) / 2, rtol=1e-6)
    np.testing.assert_allclose(float(terms["constraint"].value), 0.05 / 3 / 2, rtol=1e-6)
    np.testing.assert_allclose(float(terms["log_ratio"].value), -0.5, rtol=1e-6)
    np.testing.assert_allclose(float(terms["correct_step_log_prob"].value), -0.75, rtol=1e-6)


def _toy_policy(seed=0, vocab=5):
    """A policy with one logit row per (row, position): log-probs of fixed tokens as a function of the table."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, (B, L))
    table = rng.normal(size=(B, L, vocab)).astype(np.float32)

    def log_probs(theta):
        return jnp.take_along_axis(jax.nn.log_softmax(theta, -1), tokens[..., None], -1)[..., 0]

    return table, log_probs


def test_constraint_and_its_gradient_vanish_at_reference():
    _, _, mask, rewards, groups, _ = _data(1)
    theta_ref, log_probs = _toy_policy(1)
    ref = np.asarray(log_probs(theta_ref))

    def constraint(theta):
        terms = bcpg_loss(log_probs(theta), ref, mask, rewards, group_ids=groups, tau=1.0)
        return terms["constraint"].value

    value, grad = jax.value_and_grad(constraint)(theta_ref)
    assert float(value) == 0.0
    assert float(jnp.abs(grad).max()) == 0.0
    # Away from the reference the same term is positive and has a gradient (the test above is not vacuous).
    moved = theta_ref.copy()
    moved[:, :, 0] += 1.0
    value, grad = jax.value_and_grad(constraint)(moved)
    assert float(value) > 0 and float(jnp.abs(grad).max()) > 0


def test_beta_mask_acts_only_on_correct_steps_of_negatives():
    logp, ref, mask, rewards, groups, steps = _data(2)
    base = float(_loss(logp, ref, mask, rewards, groups, steps, beta=-0.5))
    rng = np.random.default_rng(3)
    positive_or_padding = (rewards[:, None] > 0) | (mask == 0)
    flipped = np.where(positive_or_padding & (rng.random((B, L)) < 0.7), 1.0 - steps, steps).astype(np.float32)
    assert (flipped != steps).any()
    assert float(_loss(logp, ref, mask, rewards, groups, flipped, beta=-0.5)) == pytest.approx(base, abs=0)
    # Marks on response tokens of negatives do matter.
    inside_negative = (rewards[:, None] == 0) & (mask > 0)
    changed = np.where(inside_negative, 1.0 - steps, steps).astype(np.float32)
    assert abs(float(_loss(logp, ref, mask, rewards, groups, changed, beta=-0.5)) - base) > 1e-4
    # With beta = 1 any marks are inert.
    assert float(_loss(logp, ref, mask, rewards, groups, changed, beta=1.0)) == pytest.approx(
        float(_loss(logp, ref, mask, rewards, groups, None, beta=1.0)), rel=1e-6
    )


@pytest.mark.parametrize("aggregation", ["sequence_mean", "token_mean"])
def test_micro_batches_accumulate_to_the_full_batch(aggregation):
    logp, ref, mask, rewards, groups, steps = _data(4)
    baselines = np.asarray(group_mean_baselines(jnp.asarray(rewards), jnp.asarray(groups)))
    kw = dict(beta=0.5, tau=0.2, aggregation=aggregation)

    def value_of(x, idx, denominator=None):
        rows = (ref[idx], mask[idx], rewards[idx])
        terms = bcpg_loss(x, *rows, positive_step_mask=steps[idx], baselines=baselines[idx], **kw)
        t = terms["bcpg"]
        return t.total / (t.denominator if denominator is None else denominator)

    full = np.arange(B)
    want, want_grad = jax.value_and_grad(value_of)(logp, full)
    # group_ids on the whole batch gives the same loss as the precomputed baselines.
    by_groups = bcpg_loss(logp, ref, mask, rewards, positive_step_mask=steps, group_ids=groups, **kw)["bcpg"].value
    np.testing.assert_allclose(float(by_groups), float(want), rtol=1e-6)
    # Interleaved slices (as make_train_step splits): sum totals over the summed denominators.
    slices = [full[j::3] for j in range(3)]
    den = sum(
        float(bcpg_loss(logp[s], ref[s], mask[s], rewards[s], baselines=baselines[s], **kw)["bcpg"].denominator)
        for s in slices
    )
    got, got_grad = 0.0, np.zeros_like(logp)
    for s in slices:
        v, g = jax.value_and_grad(value_of)(logp[s], s, den)
        got += float(v)
        got_grad[s] = np.asarray(g)
    np.testing.assert_allclose(got, float(want), rtol=1e-6)
    np.testing.assert_allclose(got_grad, np.asarray(want_grad), atol=1e-7)


def test_negative_beta_raises_correct_step_likelihood_inside_negatives():
    _, _, mask, rewards, groups, steps = _data(5)
    theta, log_probs = _toy_policy(5)
    ref = np.asarray(log_probs(theta))
    gated = steps * mask * (rewards[:, None] == 0)
    assert gated.sum() > 0

    def step_logp_after_sgd(beta):
        grad = jax.grad(lambda t: _loss(log_probs(t), ref, mask, rewards, groups, steps, beta=beta, tau=1e-3))(theta)
        after = np.asarray(log_probs(theta - 1.0 * grad))
        return ((after - ref) * gated).sum() / gated.sum()

    # Negatives have r - r_bar < 0: with beta < 0 the step tokens get a positive weight; with BCPG a negative one.
    assert step_logp_after_sgd(-0.5) > 1e-4
    assert step_logp_after_sgd(1.0) < -1e-4
    assert abs(step_logp_after_sgd(0.0)) < 1e-6  # beta = 0: only the (zero at theta = ref) constraint touches them


def test_named_errors():
    logp, ref, mask, rewards, groups, _ = _data()
    with pytest.raises(ValueError, match="exactly one of group_ids"):
        bcpg_loss(logp, ref, mask, rewards)
    with pytest.raises(ValueError, match="aggregation"):
        bcpg_loss(logp, ref, mask, rewards, group_ids=groups, aggregation="constant")
    with pytest.raises(ValueError, match="rewards must be"):
        bcpg_loss(logp, ref, mask, rewards[:3], group_ids=groups)

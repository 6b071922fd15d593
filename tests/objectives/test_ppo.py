"""PPO policy and value losses against hand-computed numpy (values and gradients), and the KL estimators against
their exact expectations on a categorical distribution."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from stepjax.objectives.kl import kl_penalty, kl_shaped_rewards
from stepjax.objectives.ppo import explained_variance, ppo_policy_loss, value_loss

B, L = 4, 6


def _data(seed=0):
    rng = np.random.default_rng(seed)
    mask = (rng.random((B, L)) < 0.8).astype(np.float32)
    logp = -rng.uniform(0.1, 2.0, (B, L)).astype(np.float32)
    # Ratios inside and outside the clip range, some beyond the dual-clip bounds (exp(1.5) > 3).
    old = (logp - rng.choice([-0.6, -0.05, 0.05, 0.6, 1.5], size=(B, L))).astype(np.float32)
    ref = (logp + rng.normal(0, 0.3, (B, L))).astype(np.float32)
    adv = rng.normal(size=(B, L)).astype(np.float32) * 2
    entropy = rng.uniform(0.5, 2.0, (B, L)).astype(np.float32)
    return logp, old, ref, adv, entropy, mask


def _numpy_policy(logp, old, ref, adv, entropy, mask, eps_low, eps_high, dual, kl_coef, ent_coef):
    """Per-token loss and its derivative in log pi, written branch by branch."""
    r = np.exp(logp.astype(np.float64) - old)
    unclipped, clipped = -r * adv, -np.clip(r, 1 - eps_low, 1 + eps_high) * adv
    loss = np.maximum(unclipped, clipped)
    grad = np.where(unclipped >= clipped, -r * adv, 0.0)  # the clipped branch is constant in log pi
    if dual is not None:
        bound = -dual * adv
        use_bound = (adv < 0) & (bound < loss)
        loss, grad = np.where(use_bound, bound, loss), np.where(use_bound, 0.0, grad)
    d = ref - logp.astype(np.float64)
    loss = loss + kl_coef * (np.exp(d) - d - 1) - ent_coef * entropy
    grad = grad + kl_coef * (1 - np.exp(d))
    n = mask.sum()
    return (loss * mask).sum() / n, grad * mask / n


@pytest.mark.parametrize(
    ("eps_high", "dual", "kl_coef", "ent_coef"), [(0.2, None, 0.0, 0.0), (0.28, 3.0, 0.0, 0.0), (0.2, 1.5, 0.1, 0.01)]
)
def test_policy_loss_matches_numpy(eps_high, dual, kl_coef, ent_coef):
    logp, old, ref, adv, entropy, mask = _data()

    def loss(lp):
        terms = ppo_policy_loss(
            lp,
            old,
            adv,
            mask,
            clip_eps=0.2,
            clip_eps_high=eps_high,
            dual_clip=dual,
            ref_log_probs=ref,
            kl_coef=kl_coef,
            entropy=entropy,
            entropy_coef=ent_coef,
        )
        return terms["ppo"].value, terms

    (value, terms), grad = jax.value_and_grad(loss, has_aux=True)(logp)
    want, want_grad = _numpy_policy(logp, old, ref, adv, entropy, mask, 0.2, eps_high, dual, kl_coef, ent_coef)
    assert abs(float(value) - want) < 1e-6
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-6)
    r = np.exp(logp - old)
    clipped = ((r > 1 + eps_high) & (adv > 0)) | ((r < 0.8) & (adv < 0))
    assert abs(float(terms["policy/clipfrac_avg"].value) - (clipped * mask).sum() / mask.sum()) < 1e-6
    assert 0 < float(terms["policy/clipfrac_avg"].value) < 1
    approx_kl = (0.5 * (logp - old) ** 2 * mask).sum() / mask.sum()
    assert abs(float(terms["policy/approxkl_avg"].value) - approx_kl) < 1e-6
    if dual is not None:
        assert float(terms["policy/dual_clipfrac_avg"].value) > 0  # the data reach the dual-clip bound


def test_value_loss_matches_orz_formula():
    rng = np.random.default_rng(1)
    values = rng.normal(size=(B, L)).astype(np.float32)
    old = (values + rng.normal(0, 0.5, (B, L))).astype(np.float32)
    returns = rng.integers(0, 2, size=(B, L)).astype(np.float32)
    mask = (rng.random((B, L)) < 0.8).astype(np.float32)
    v_clip = old + np.clip(values - old, -0.2, 0.2)
    per_token = 0.5 * np.maximum((v_clip - returns) ** 2, (values - returns) ** 2)
    # ORZ: token mean within each (packed) row, then mean over rows.
    rows = (per_token * mask).sum(-1) / mask.sum(-1)
    terms = value_loss(values, old, returns, mask, value_clip=0.2, aggregation="sequence_mean")
    np.testing.assert_allclose(float(terms["value"].value), rows.mean(), rtol=1e-6)
    frac = (((v_clip - returns) ** 2 > (values - returns) ** 2) * mask).sum() / mask.sum()
    np.testing.assert_allclose(float(terms["val/clipfrac_avg"].value), frac, rtol=1e-6)
    plain = value_loss(values, old, returns, mask, value_clip=None)["value"].value
    np.testing.assert_allclose(float(plain), (0.5 * (values - returns) ** 2 * mask).sum() / mask.sum(), rtol=1e-6)
    grad = jax.grad(lambda v: value_loss(v, old, returns, mask, value_clip=None)["value"].value)(values)
    np.testing.assert_allclose(grad, (values - returns) * mask / mask.sum(), rtol=1e-5, atol=1e-7)


def test_explained_variance():
    rng = np.random.default_rng(2)
    returns = rng.normal(size=(B, L)).astype(np.float32)
    mask = np.ones((B, L), np.float32)
    assert abs(float(explained_variance(returns, returns, mask)) - 1.0) < 1e-6
    assert abs(float(explained_variance(np.full_like(returns, returns.mean()), returns, mask))) < 1e-5


def test_kl_estimators_expectations_and_bounds():
    # On tokens drawn from pi, E[k1] = E[k3] = KL(pi || ref) exactly; k3 >= 0 and = 0 at pi = ref.
    rng = np.random.default_rng(3)
    p = rng.dirichlet(np.ones(10)).astype(np.float64)
    q = rng.dirichlet(np.ones(10)).astype(np.float64)
    logp, logq = np.log(p).astype(np.float32), np.log(q).astype(np.float32)
    kl = (p * (np.log(p) - np.log(q))).sum()
    for est in ("k1", "k3", "low_var_kl", "kl"):
        assert abs(float((p * np.asarray(kl_penalty(logp, logq, est))).sum()) - kl) < 1e-5, est
    k2 = np.asarray(kl_penalty(logp, logq, "k2"))
    np.testing.assert_allclose(k2, 0.5 * (logp - logq) ** 2, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(kl_penalty(logp, logq, "kimi")), k2)
    assert np.all(np.asarray(kl_penalty(logp, logq, "k3")) >= 0)
    assert np.all(np.asarray(kl_penalty(logp, logp, "k3")) == 0)
    assert np.max(np.asarray(kl_penalty(logp, logq, "k3", clamp=0.1))) == np.float32(0.1)
    with pytest.raises(ValueError, match="unknown KL estimator 'k4'"):
        kl_penalty(logp, logq, "k4")


def test_kl_in_reward_shapes_valid_tokens_only():
    logp, _, ref, _, _, mask = _data(4)
    rewards = np.zeros((B, L), np.float32)
    rewards[:, -1] = 1.0
    shaped = np.asarray(kl_shaped_rewards(rewards, logp, ref, mask, 0.1, "k1"))
    np.testing.assert_allclose(shaped, rewards - 0.1 * (logp - ref) * mask, rtol=1e-6, atol=1e-7)


def test_bad_options_are_named():
    logp, old, _, adv, _, mask = _data()
    with pytest.raises(ValueError, match="dual_clip must be > 1"):
        ppo_policy_loss(logp, old, adv, mask, dual_clip=0.5)
    with pytest.raises(ValueError, match="kl_coef > 0 needs ref_log_probs"):
        ppo_policy_loss(logp, old, adv, mask, kl_coef=0.1)

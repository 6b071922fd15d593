"""Golden parity with TRL 1.16.0's ``GRPOTrainer._compute_loss``: each loss_type (grpo, bnpo, dr_grpo, dapo), token
and sequence (GSPO) importance sampling, asymmetric clipping, two-sided ``delta``, the k3 KL term (with and without
the importance-sampling correction), fed the same log-probs and advantages: loss, gradient, logged metrics (1e-6)."""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trl_standins import trl_grpo_loss

from stepjax.objectives.grpo import grpo_loss

pytestmark = pytest.mark.parity

B, L, MAX_LEN, TOL = 8, 9, 12, 1e-6
CLIP_METRICS = ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean")


def _data(seed: int = 0):
    """Completions of different lengths; the old policy differs per sequence so that token- and sequence-level
    clipping are both active somewhere."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((B, L), np.float32)
    for i in range(B):
        mask[i, : rng.integers(2, L + 1)] = 1.0
    logp = -rng.uniform(0.05, 2.5, (B, L)).astype(np.float32)
    shift = rng.choice([-0.5, -0.1, 0.1, 0.5], size=(B, 1))
    old = (logp + shift + rng.normal(0, 0.2, (B, L))).astype(np.float32)
    ref = (logp + rng.normal(0, 0.3, (B, L))).astype(np.float32)
    adv = rng.normal(size=B).astype(np.float32)
    return logp, old, ref, adv, mask


def _ours(logp, adv, mask, **kw):
    def loss(lp):
        terms = grpo_loss(lp, adv, mask, **kw)
        return terms["grpo"].value, terms

    (value, terms), grad = jax.value_and_grad(loss, has_aux=True)(logp)
    return float(value), np.asarray(grad), {k: float(t.value) for k, t in terms.items()}


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize(("beta", "epsilon_high", "delta"), [(0.0, None, None), (0.04, 0.28, None), (0.1, 0.28, 1.3)])
def test_policy_loss_matches_trl(loss_type, level, beta, epsilon_high, delta):
    logp, old, ref, adv, mask = _data()
    common = dict(old_log_probs=old, ref_log_probs=ref, beta=beta, epsilon_high=epsilon_high, delta=delta)
    common.update(importance_sampling_level=level, max_completion_length=MAX_LEN)
    want, want_grad, want_metrics = trl_grpo_loss(logp, adv, mask, loss_type=loss_type, **common)
    got, grad, metrics = _ours(logp, adv, mask, aggregation=loss_type, **common)
    assert abs(got - want) < TOL, (got, want)
    np.testing.assert_allclose(grad * mask, want_grad, rtol=0, atol=TOL)
    assert np.all(grad * (1 - mask) == 0)
    for key in CLIP_METRICS + (("kl",) if beta else ()):
        assert abs(metrics[key] - want_metrics[key]) < TOL, key
    # The data exercise the clip: some tokens (or sequences) sit outside the clip range.
    assert want_metrics["clip_ratio/region_mean"] > 0


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_kl_importance_correction_matches_trl(level):
    logp, old, ref, adv, mask = _data(1)
    common = dict(old_log_probs=old, ref_log_probs=ref, beta=0.05, importance_sampling_level=level)
    want, want_grad, want_metrics = trl_grpo_loss(
        logp, adv, mask, loss_type="grpo", use_bias_correction_kl=True, **common
    )
    got, grad, metrics = _ours(logp, adv, mask, aggregation="grpo", kl_importance_correction=True, **common)
    assert abs(got - want) < TOL
    np.testing.assert_allclose(grad * mask, want_grad, rtol=0, atol=TOL)
    assert abs(metrics["kl"] - want_metrics["kl"]) < TOL


def test_on_policy_step_matches_trl():
    # No old log-probs: TRL uses per_token_logps.detach(); the ratio is 1 and only the gradient carries information.
    logp, _, ref, adv, mask = _data(2)
    want, want_grad, _ = trl_grpo_loss(logp, adv, mask, ref_log_probs=ref, beta=0.04, loss_type="dapo")
    got, grad, _ = _ours(logp, adv, mask, ref_log_probs=ref, beta=0.04, aggregation="dapo")
    assert abs(got - want) < TOL
    np.testing.assert_allclose(grad * mask, want_grad, rtol=0, atol=TOL)

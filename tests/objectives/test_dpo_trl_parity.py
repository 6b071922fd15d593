"""Golden parity with TRL 1.16.0: every DPO loss type, f-divergence, loss mixture, LD-DPO and WPO weighting, fed the
same per-token log-probs, gives TRL's ``DPOTrainer._compute_loss`` loss, gradient and logged metrics (fp32, 1e-6)."""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trl_standins import trl_dpo_loss

from stepjax.objectives.dpo import DPO_LOSS_TYPES, dpo_loss

pytestmark = pytest.mark.parity

P, L, TOL = 6, 7, 1e-6
METRICS = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
)


def _data(seed: int = 0):
    rng = np.random.default_rng(seed)

    def masks():
        m = np.zeros((P, L), np.float32)
        for i in range(P):
            m[i, : rng.integers(2, L + 1)] = 1.0
        return m

    cm, rm = masks(), masks()
    c = -rng.uniform(0.05, 2.5, (P, L)).astype(np.float32)
    r = -rng.uniform(0.05, 2.5, (P, L)).astype(np.float32)
    ref_c = (c + rng.normal(0, 0.4, (P, L))).astype(np.float32)
    ref_r = (r + rng.normal(0, 0.4, (P, L))).astype(np.float32)
    return c, r, cm, rm, ref_c, ref_r


def _ours(c, r, cm, rm, ref_c, ref_r, **kw):
    def loss(c, r):
        terms = dpo_loss(c, r, cm, rm, ref_c, ref_r, **kw)
        return sum(terms[k].value for k in ("dpo", "dpo_sft") if k in terms), terms

    (value, terms), (gc, gr) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(c, r)
    return float(value), np.asarray(gc), np.asarray(gr), {k: float(t.value) for k, t in terms.items()}


def _check(kw_ours, kw_trl, *, per_token_ref=False, seed=0, log_sum_sq=None):
    c, r, cm, rm, ref_c, ref_r = _data(seed)
    refs = (ref_c, ref_r) if per_token_ref else ((ref_c * cm).sum(-1), (ref_r * rm).sum(-1))
    want, want_gc, want_gr, want_metrics = trl_dpo_loss(c, r, cm, rm, *refs, log_sum_sq=log_sum_sq, **kw_trl)
    extra = (
        {}
        if log_sum_sq is None
        else dict(chosen_log_sum_sq_probs=log_sum_sq[0], rejected_log_sum_sq_probs=log_sum_sq[1])
    )
    got, gc, gr, metrics = _ours(c, r, cm, rm, *refs, **kw_ours, **extra)
    # fp32: 1e-6 absolute, relative for losses above 1 (ipo/sppo_hard at small beta reach ~25).
    assert abs(got - want) < TOL * max(1.0, abs(want)), (got, want)
    # TRL's per-token log-probs are zero off the mask (so is its gradient); ours ignore those positions.
    np.testing.assert_allclose(gc * cm, want_gc, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(gr * rm, want_gr, rtol=TOL, atol=TOL)
    assert np.all(gc * (1 - cm) == 0) and np.all(gr * (1 - rm) == 0)
    for key in METRICS:
        assert abs(metrics[key] - want_metrics[key]) < 1e-5 * max(1.0, abs(want_metrics[key])), key
    return abs(got - want)


def _smoothing(loss_type: str) -> float:
    return {"exo_pair": 1e-3, "robust": 0.1, "aot": 0.1, "aot_unpaired": 0.1}.get(loss_type, 0.0)


@pytest.mark.parametrize("loss_type", DPO_LOSS_TYPES)
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_every_loss_type_matches_trl(loss_type, beta):
    kw = dict(beta=beta, loss_type=loss_type, label_smoothing=_smoothing(loss_type))
    _check(kw, {**kw, "loss_type": [loss_type]})


@pytest.mark.parametrize(
    ("f_divergence", "alpha"),
    [("forward_kl", 1.0), ("js_divergence", 1.0), ("alpha_divergence", 0.5), ("alpha_divergence", 1.0)],
)
@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo", "discopop", "sigmoid_norm"])
def test_f_divergences_match_trl(f_divergence, alpha, loss_type):
    _check(
        dict(beta=0.3, loss_type=loss_type, f_divergence=f_divergence, f_alpha=alpha),
        dict(beta=0.3, loss_type=[loss_type], f_divergence=f_divergence, f_alpha=alpha),
    )


def test_weighted_mixture_matches_trl():
    types, weights = ["sigmoid", "sft", "ipo", "bco_pair"], [1.0, 0.3, 0.5, 0.2]
    kw = dict(beta=0.2, loss_type=types, loss_weights=weights)
    _check(kw, kw, seed=1)


def test_ld_dpo_with_per_token_reference_matches_trl():
    # TRL's reference-model path (per-token reference log-probs, LD-DPO weighting of the longer tail).
    kw = dict(beta=0.1, loss_type=["sigmoid"], ld_alpha=0.4)
    _check({**kw, "loss_type": "sigmoid"}, kw, per_token_ref=True, seed=2)


def test_wpo_weighting_matches_trl():
    rng = np.random.default_rng(3)
    lssp = (-rng.uniform(0.5, 1.5, (P, L)).astype(np.float32), -rng.uniform(0.5, 1.5, (P, L)).astype(np.float32))
    # (TRL 1.16 raises for sft + use_weighting: it scales an expanded tensor in place.)
    kw = dict(beta=0.1, loss_type=["sigmoid", "ipo"], loss_weights=[1.0, 0.5])
    _check(kw, kw, seed=3, log_sum_sq=lssp)


def test_reference_free_equals_trl_with_zero_reference():
    c, r, cm, rm, _, _ = _data(4)
    want, want_gc, _, _ = trl_dpo_loss(c, r, cm, rm, np.zeros(P, np.float32), np.zeros(P, np.float32), beta=0.1)
    got, gc, _, _ = _ours(c, r, cm, rm, None, None, beta=0.1, reference_free=True)
    assert abs(got - want) < TOL
    np.testing.assert_allclose(gc * cm, want_gc, rtol=0, atol=TOL)

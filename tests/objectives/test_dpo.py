"""DPO objective beyond TRL parity: cDPO label smoothing, token-class exclusion, pair layout helpers, live vs
precomputed (cached) reference, named errors."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from stepjax.objectives.dpo import (
    dpo_loss,
    dpo_loss_weights,
    exclude_tokens,
    log_sum_sq_probs,
    pair_token_log_probs,
    split_pairs,
    stack_pairs,
)
from stepjax.objectives.lm import token_log_probs
from stepjax.objectives.reference_cache import cached_reference_log_probs, example_key

P, L, V = 4, 6, 11


def _data(seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(2 * P, L, V)).astype(np.float32)
    ref_logits = (logits + rng.normal(0, 0.5, logits.shape)).astype(np.float32)
    tokens = rng.integers(0, V, size=(2 * P, L)).astype(np.int32)
    mask = np.ones((2 * P, L), np.float32)
    for i in range(2 * P):
        mask[i, rng.integers(2, L + 1) :] = 0.0
    return logits, ref_logits, tokens, mask


def test_sigmoid_with_label_smoothing_is_cdpo():
    logits, ref_logits, tokens, mask = _data()
    c, r = pair_token_log_probs(logits, tokens)
    rc, rr = pair_token_log_probs(ref_logits, tokens)
    cm, rm = split_pairs(mask)
    eps, beta = 0.2, 0.3
    delta = ((c - rc) * cm).sum(-1) - ((r - rr) * rm).sum(-1)
    log_sig = jax.nn.log_sigmoid
    want = np.mean(-(1 - eps) * log_sig(beta * delta) - eps * log_sig(-beta * delta))
    got = dpo_loss(c, r, cm, rm, rc, rr, beta=beta, label_smoothing=eps)["dpo"].value
    assert abs(float(got) - float(want)) < 1e-6


def test_pair_layout_helpers():
    logits, _, tokens, _ = _data(1)
    c, r = pair_token_log_probs(logits, tokens)
    full = token_log_probs(logits, tokens)
    np.testing.assert_array_equal(stack_pairs(c, r), full)
    want = jax.nn.logsumexp(2 * jax.nn.log_softmax(logits, -1), -1)
    np.testing.assert_allclose(log_sum_sq_probs(logits), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="even leading size"):
        split_pairs(np.zeros((3, 2)))


def test_excluded_token_classes_do_not_count():
    # Tokens of an excluded class (say audio ids {2, 3}) leave the loss as if they were absent.
    logits, ref_logits, tokens, mask = _data(2)
    lp, ref = token_log_probs(logits, tokens), token_log_probs(ref_logits, tokens)
    keep = exclude_tokens(mask, tokens, [2, 3])
    assert np.any(keep != mask)

    def loss(lp):
        c, r = split_pairs(lp)
        return dpo_loss(c, r, *split_pairs(keep), *split_pairs(ref), beta=0.1, loss_type=["sigmoid", "sft"])

    terms = loss(lp)
    value, grad = jax.value_and_grad(lambda x: sum(t.value for k, t in loss(x).items() if k.startswith("dpo")))(lp)
    assert np.all(np.asarray(grad)[np.asarray(keep) == 0] == 0)
    # Same as compacting each sequence to its kept tokens.
    compact = lambda x: np.stack([np.pad(row[k > 0], (0, L - int(k.sum()))) for row, k in zip(x, keep, strict=True)])
    cmask = np.stack([np.pad(np.ones(int(k.sum())), (0, L - int(k.sum()))) for k in keep]).astype(np.float32)
    lp_c, ref_c = compact(np.asarray(lp)), compact(np.asarray(ref))
    terms_c = dpo_loss(*split_pairs(lp_c), *split_pairs(cmask), *split_pairs(ref_c), loss_type=["sigmoid", "sft"])
    for key in ("dpo", "dpo_sft", "rewards/margins"):
        assert abs(float(terms[key].value) - float(terms_c[key].value)) < 1e-6, key
    assert np.isfinite(float(value))


def test_precomputed_cached_reference_equals_live_reference(tmp_path):
    logits, ref_logits, tokens, mask = _data(3)
    c, r = pair_token_log_probs(logits, tokens)
    rc, rr = pair_token_log_probs(ref_logits, tokens)
    cm, rm = split_pairs(mask)
    keys = [example_key(tokens[i], tokens[P + i]) for i in range(P)]
    calls = []

    def compute(indices):  # the "reference forward": per-sequence sums for the requested examples
        calls.append(list(indices))
        idx = np.asarray(indices)
        return (np.asarray(rc) * cm).sum(-1)[idx], (np.asarray(rr) * rm).sum(-1)[idx]

    path = tmp_path / "ref.npz"
    cached = cached_reference_log_probs(path, keys, compute, meta={"ref": "toy"}, batch_size=3)
    again = cached_reference_log_probs(path, keys, compute, meta={"ref": "toy"})
    assert calls == [[0, 1, 2], [3]]  # computed once, in batches; the second call reads the file
    for a, b in zip(cached, again, strict=True):
        np.testing.assert_array_equal(a, b)
    for loss_type in ("sigmoid", "ipo", "apo_zero"):
        live = dpo_loss(c, r, cm, rm, rc, rr, loss_type=loss_type)
        pre = dpo_loss(c, r, cm, rm, *cached, loss_type=loss_type)
        for key in ("dpo", "rewards/chosen", "rewards/accuracies"):
            assert abs(float(live[key].value) - float(pre[key].value)) < 1e-6, (loss_type, key)


def test_loss_weights_helper_and_bad_options():
    assert dpo_loss_weights("sigmoid") == {"dpo": 1.0}
    assert dpo_loss_weights(["ipo", "sft"]) == {"dpo": 1.0, "dpo_sft": 1.0}
    assert dpo_loss_weights("sft") == {"dpo_sft": 1.0}
    logits, ref_logits, tokens, mask = _data()
    c, r = pair_token_log_probs(logits, tokens)
    rc, rr = pair_token_log_probs(ref_logits, tokens)
    cm, rm = split_pairs(mask)
    cases = [
        (dict(loss_type="exo_pair"), "needs 0 < label_smoothing < 1"),
        (dict(loss_type="robust", label_smoothing=0.5), "needs 0 <= label_smoothing < 0.5"),
        (dict(loss_type="dpo"), "unknown DPO loss_type"),
        (dict(loss_type=["sigmoid", "ipo"], loss_weights=[1.0]), "1 entries for 2 loss types"),
        (dict(f_divergence="kl"), "unknown f_divergence 'kl'"),
        (dict(reference_free=True), "reference_free=True but reference log-probs were given"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            dpo_loss(c, r, cm, rm, rc, rr, **kwargs)
    with pytest.raises(ValueError, match="needs ref_chosen_log_probs"):
        dpo_loss(c, r, cm, rm)
    with pytest.raises(ValueError, match="both be"):
        dpo_loss(c, r, cm, rm, rc, rr.sum(-1))

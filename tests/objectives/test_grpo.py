"""GRPO objective: closed forms (GSPO on equal lengths, Dr. GRPO constant, sequence-mean-token-sum), packed rows equal
unpacked rows for every aggregation, GSPO-token equals GSPO for sequence-level advantages, named errors."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from stepjax.objectives.grpo import grpo_loss, resolve_aggregation

B, L = 6, 5


def _data(seed=0, equal_lengths=False):
    rng = np.random.default_rng(seed)
    mask = np.ones((B, L), np.float32)
    if not equal_lengths:
        for i in range(B):
            mask[i, rng.integers(2, L + 1) :] = 0.0
    logp = -rng.uniform(0.1, 2.0, (B, L)).astype(np.float32)
    old = (logp - rng.choice([-0.4, -0.05, 0.05, 0.4], size=(B, 1)) + rng.normal(0, 0.1, (B, L))).astype(np.float32)
    ref = (logp + rng.normal(0, 0.3, (B, L))).astype(np.float32)
    adv = rng.normal(size=B).astype(np.float32)
    return logp, old, ref, adv, mask


def test_gspo_closed_form_on_equal_lengths():
    logp, old, _, adv, mask = _data(equal_lengths=True)
    s = np.exp((logp - old).mean(-1))
    want = np.mean(-np.minimum(s * adv, np.clip(s, 1 - 3e-4, 1 + 4e-4) * adv))
    got = grpo_loss(
        logp,
        adv,
        mask,
        old_log_probs=old,
        epsilon=3e-4,
        epsilon_high=4e-4,
        importance_sampling_level="sequence",
        aggregation="sequence_mean",
    )
    assert abs(float(got["grpo"].value) - want) < 1e-6
    assert float(got["clip_ratio/region_mean"].value) > 0


def test_constant_and_sequence_sum_closed_forms():
    logp, old, _, adv, mask = _data(1)
    r = np.exp(logp - old)
    per_token = -np.minimum(r * adv[:, None], np.clip(r, 0.8, 1.2) * adv[:, None]) * mask
    dr = grpo_loss(logp, adv, mask, old_log_probs=old, aggregation="dr_grpo", max_completion_length=16)
    assert abs(float(dr["grpo"].value) - per_token.sum() / (B * 16)) < 1e-6
    seq_sum = grpo_loss(logp, adv, mask, old_log_probs=old, aggregation="sequence-mean-token-sum")
    assert abs(float(seq_sum["grpo"].value) - per_token.sum(-1).mean()) < 1e-6


def _pack(x, mask):
    """Two completions per row: rows (0,1), (2,3), (4,5) laid side by side, with segment ids 1 and 2."""
    packed = np.concatenate([x[0::2], x[1::2]], axis=1)
    pmask = np.concatenate([mask[0::2], mask[1::2]], axis=1)
    seg = np.concatenate([np.ones_like(mask[0::2]), 2 * np.ones_like(mask[1::2])], axis=1).astype(np.int32)
    return packed, pmask, seg


def _unpack(packed):
    out = np.zeros((B, L), packed.dtype)
    out[0::2], out[1::2] = packed[:, :L], packed[:, L:]
    return out


@pytest.mark.parametrize("aggregation", ["token_mean", "sequence_mean", "sequence_sum"])
@pytest.mark.parametrize("level", ["token", "sequence", "sequence_token"])
def test_packed_rows_equal_unpacked(aggregation, level):
    logp, old, ref, adv, mask = _data(2)
    kw = dict(beta=0.05, importance_sampling_level=level, aggregation=aggregation, epsilon_high=0.28)

    def loss(lp, old, ref, adv, mask, seg):
        return grpo_loss(lp, adv, mask, old_log_probs=old, ref_log_probs=ref, segment_ids=seg, **kw)["grpo"].value

    want, want_grad = jax.value_and_grad(loss)(logp, old, ref, adv, mask, None)
    adv_tok = np.broadcast_to(adv[:, None], (B, L)).astype(np.float32)
    packed = [_pack(x, mask)[0] for x in (logp, old, ref, adv_tok)]
    _, pmask, seg = _pack(logp, mask)
    got, grad = jax.value_and_grad(loss)(*packed, pmask, seg)
    assert abs(float(got) - float(want)) < 1e-6
    np.testing.assert_allclose(_unpack(np.asarray(grad)), want_grad, rtol=1e-5, atol=1e-7)


def test_gspo_token_equals_gspo_for_sequence_advantages():
    # With one advantage per sequence, GSPO-token has GSPO's value and gradient (the GSPO paper's remark).
    logp, old, _, adv, mask = _data(3)

    def loss(lp, level):
        kw = dict(old_log_probs=old, importance_sampling_level=level, aggregation="sequence_mean")
        return grpo_loss(lp, adv, mask, **kw)["grpo"].value

    v_seq, g_seq = jax.value_and_grad(loss)(logp, "sequence")
    v_tok, g_tok = jax.value_and_grad(loss)(logp, "sequence_token")
    assert abs(float(v_seq) - float(v_tok)) < 1e-7
    np.testing.assert_allclose(g_tok, g_seq, rtol=1e-5, atol=1e-8)


def test_aliases_and_errors():
    assert resolve_aggregation("grpo") == "sequence_mean"
    assert resolve_aggregation("bnpo") == resolve_aggregation("dapo") == resolve_aggregation("token-mean")
    assert resolve_aggregation("sequence-mean-token-sum") == "sequence_sum"
    logp, _, _, adv, mask = _data()
    with pytest.raises(ValueError, match="needs max_completion_length"):
        grpo_loss(logp, adv, mask, aggregation="dr_grpo")
    with pytest.raises(ValueError, match="per-token advantages"):
        grpo_loss(logp, adv, mask, segment_ids=np.ones((B, L), np.int32))
    with pytest.raises(ValueError, match="unknown importance_sampling_level 'seq'"):
        grpo_loss(logp, adv, mask, importance_sampling_level="seq")
    with pytest.raises(ValueError, match="beta > 0 needs ref_log_probs"):
        grpo_loss(logp, adv, mask, beta=0.1)
    with pytest.raises(ValueError, match="unknown aggregation 'avg'"):
        grpo_loss(logp, adv, mask, aggregation="avg")

"""Aggregation modes and per-sequence totals against plain numpy loops, packed and unpacked."""

from __future__ import annotations

import numpy as np
import pytest

from stepjax.objectives.terms import AGGREGATIONS, aggregate, broadcast_sequences, sequence_totals


def _packed(seed=0, batch=3, length=10):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, length)).astype(np.float32)
    mask = (rng.random((batch, length)) < 0.8).astype(np.float32)
    seg = np.zeros((batch, length), np.int32)
    for b in range(batch):
        cuts = sorted(rng.choice(np.arange(1, length - 1), size=2, replace=False))
        seg[b, : cuts[0]], seg[b, cuts[0] : cuts[1]], seg[b, cuts[1] : length - 1] = 1, 2, 3  # last token: padding
    mask[1, seg[1] == 2] = 0.0  # a sample without valid tokens counts in no denominator
    return x, mask, seg


def _sequences(x, mask, seg):
    """Yields (sum, count) of each sample with valid tokens."""
    for b in range(x.shape[0]):
        ids = [None] if seg is None else [s for s in np.unique(seg[b]) if s > 0]
        for s in ids:
            m = mask[b] if s is None else mask[b] * (seg[b] == s)
            if m.sum() > 0:
                yield (x[b] * m).sum(), m.sum()


@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("mode", AGGREGATIONS)
def test_aggregate_matches_numpy(mode, packed):
    x, mask, seg = _packed()
    seg = seg if packed else None
    term = aggregate(x, mask, mode, segment_ids=seg, constant=7.0)
    seqs = list(_sequences(x, mask, seg))
    want = {
        "token_mean": ((x * mask).sum(), mask.sum()),
        "sequence_mean": (sum(s / c for s, c in seqs), len(seqs)),
        "sequence_sum": (sum(s for s, _ in seqs), len(seqs)),
        "constant": ((x * mask).sum(), x.shape[0] * 7.0),
        "sum": ((x * mask).sum(), x.shape[0]),
    }[mode]
    np.testing.assert_allclose(float(term.total), want[0], rtol=1e-5, atol=1e-6)
    assert float(term.denominator) == want[1]


def test_sequence_totals_and_broadcast():
    x, mask, seg = _packed(1)
    sums, counts = sequence_totals(x, mask, seg)
    assert sums.shape == x.shape
    for b in range(x.shape[0]):
        for s in range(1, x.shape[1] + 1):
            m = mask[b] * (seg[b] == s)
            np.testing.assert_allclose(sums[b, s - 1], (x[b] * m).sum(), rtol=1e-5, atol=1e-6)
            assert counts[b, s - 1] == m.sum()
    spread = np.asarray(broadcast_sequences(sums, seg, x.shape[1]))
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            if seg[b, t] > 0:
                assert spread[b, t] == sums[b, seg[b, t] - 1]
    row_sums, row_counts = sequence_totals(x, mask)
    np.testing.assert_allclose(row_sums[:, 0], (x * mask).sum(-1), rtol=1e-5)
    np.testing.assert_array_equal(row_counts[:, 0], mask.sum(-1))


def test_unknown_mode_is_named():
    with pytest.raises(ValueError, match="unknown aggregation 'mean'"):
        aggregate(np.zeros((1, 2)), np.ones((1, 2)), "mean")

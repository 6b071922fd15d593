"""Loss terms as ``(sum, denominator)`` pairs.

Every objective returns ``{name: (sum, denominator)}``. The trainer adds sums and denominators over micro-batches
and divides once at the end, so micro-batching, packing and gradient accumulation give exactly the big-batch loss.
Denominators depend only on the batch (masks, counts), never on parameters.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Term(NamedTuple):
    """One loss (or metric) term: ``value = total / denominator`` after summing both over micro-batches."""

    total: jax.Array
    denominator: jax.Array

    @property
    def value(self) -> jax.Array:
        return self.total / jnp.maximum(self.denominator, 1e-12)


LossTerms = dict[str, Term]

AGGREGATIONS = ("token_mean", "sequence_mean", "constant", "sum")


def aggregate(
    per_token: jax.Array,
    mask: jax.Array,
    mode: str = "token_mean",
    *,
    segment_ids: jax.Array | None = None,
    constant: float = 1.0,
) -> Term:
    """Reduces ``per_token [batch, len]`` over ``mask`` into a ``Term``.

    Modes:
      ``token_mean``: sum over valid tokens / number of valid tokens.
      ``sequence_mean``: mean over sequences of each sequence's token mean. With ``segment_ids`` a "sequence" is a
        packed sample (segment ids ``1..S``; 0 = padding), otherwise a row.
      ``constant``: sum over valid tokens / ``constant`` per row (Dr. GRPO style; denominator = rows x constant).
      ``sum``: plain sum, denominator 1 per row.
    """
    mask = mask.astype(jnp.float32)
    per_token = per_token.astype(jnp.float32) * mask
    if mode == "token_mean":
        return Term(per_token.sum(), mask.sum())
    if mode == "sequence_mean":
        if segment_ids is None:
            counts = mask.sum(-1)
            return Term(jnp.sum(per_token.sum(-1) / jnp.maximum(counts, 1.0)), jnp.sum(counts > 0).astype(jnp.float32))
        max_seg = segment_ids.shape[-1] + 1
        onehot = jax.nn.one_hot(segment_ids, max_seg, dtype=jnp.float32)[..., 1:]  # [b, t, S]; drop padding 0
        seg_sum = jnp.einsum("bt,bts->bs", per_token, onehot)
        seg_cnt = jnp.einsum("bt,bts->bs", mask, onehot)
        present = seg_cnt > 0
        return Term(
            jnp.sum(jnp.where(present, seg_sum / jnp.maximum(seg_cnt, 1.0), 0.0)), present.sum().astype(jnp.float32)
        )
    if mode == "constant":
        return Term(per_token.sum(), jnp.asarray(per_token.shape[0] * constant, jnp.float32))
    if mode == "sum":
        return Term(per_token.sum(), jnp.asarray(per_token.shape[0], jnp.float32))
    raise ValueError(f"unknown aggregation {mode!r}; expected one of {AGGREGATIONS}")

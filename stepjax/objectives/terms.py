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

AGGREGATIONS = ("token_mean", "sequence_mean", "sequence_sum", "constant", "sum")


def sequence_totals(
    per_token: jax.Array, mask: jax.Array, segment_ids: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """Per-sequence sums of ``per_token * mask`` and valid-token counts.

    Args:
      per_token, mask: ``[batch, len]``.
      segment_ids: ``[batch, len]`` packed-sample ids ``1..S`` (0 = padding), or None (one sequence per row).
    Returns:
      ``(sums, counts)``, each ``[batch, S]`` float32: ``S = 1`` without segment ids, else ``S = len`` (slot ``s``
      holds segment ``s + 1``; absent segments have count 0).
    """
    mask = mask.astype(jnp.float32)
    per_token = per_token.astype(jnp.float32) * mask
    if segment_ids is None:
        return per_token.sum(-1, keepdims=True), mask.sum(-1, keepdims=True)
    batch, length = per_token.shape
    # One flat bucket per (row, segment); padding (id 0) goes to a spare last bucket that is dropped. O(batch x len),
    # unlike a one-hot [batch, len, S] einsum.
    rows = jnp.arange(batch)[:, None] * length
    ids = jnp.where(segment_ids > 0, rows + segment_ids - 1, batch * length).reshape(-1)
    sums = jax.ops.segment_sum(per_token.reshape(-1), ids, batch * length + 1)[:-1].reshape(batch, length)
    counts = jax.ops.segment_sum(mask.reshape(-1), ids, batch * length + 1)[:-1].reshape(batch, length)
    return sums, counts


def broadcast_sequences(per_sequence: jax.Array, segment_ids: jax.Array | None, length: int) -> jax.Array:
    """Spreads ``[batch, S]`` per-sequence values (as from ``sequence_totals``) back over ``[batch, len]`` tokens."""
    if segment_ids is None:
        return jnp.broadcast_to(per_sequence[:, :1], (per_sequence.shape[0], length))
    return jnp.take_along_axis(per_sequence, jnp.maximum(segment_ids - 1, 0), axis=1)


def aggregate(
    per_token: jax.Array,
    mask: jax.Array,
    mode: str = "token_mean",
    *,
    segment_ids: jax.Array | None = None,
    constant: float = 1.0,
) -> Term:
    """Reduces ``per_token [batch, len]`` over ``mask`` into a ``Term``.

    Modes (a "sequence" is a packed sample when ``segment_ids`` are given (ids ``1..S``, 0 = padding), else a row):
      ``token_mean``: sum over valid tokens / number of valid tokens (TRL ``bnpo``/``dapo``, Tunix ``token-mean``).
      ``sequence_mean``: mean over sequences of each sequence's token mean (TRL ``grpo``, Tunix
        ``sequence-mean-token-mean``).
      ``sequence_sum``: mean over sequences of each sequence's token sum (Tunix ``sequence-mean-token-sum``).
      ``constant``: sum over valid tokens / ``constant`` per row (Dr. GRPO: ``constant = max completion length``;
        denominator = rows x constant).
      ``sum``: plain sum, denominator 1 per row.
    Sequences without valid tokens count in no denominator.
    """
    mask = mask.astype(jnp.float32)
    per_token = per_token.astype(jnp.float32) * mask
    if mode == "token_mean":
        return Term(per_token.sum(), mask.sum())
    if mode in ("sequence_mean", "sequence_sum"):
        sums, counts = sequence_totals(per_token, mask, segment_ids)
        present = counts > 0
        per_seq = sums / jnp.maximum(counts, 1.0) if mode == "sequence_mean" else sums
        return Term(jnp.sum(jnp.where(present, per_seq, 0.0)), present.sum().astype(jnp.float32))
    if mode == "constant":
        return Term(per_token.sum(), jnp.asarray(per_token.shape[0] * constant, jnp.float32))
    if mode == "sum":
        return Term(per_token.sum(), jnp.asarray(per_token.shape[0], jnp.float32))
    raise ValueError(f"unknown aggregation {mode!r}; expected one of {AGGREGATIONS}")

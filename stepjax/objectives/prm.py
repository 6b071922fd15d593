"""Process reward model objective: binary cross-entropy of a step score read at each step separator.

``L = -Σ_i [y_i log ŷ_i + (1 - y_i) log(1 - ŷ_i)]``, ``ŷ_i = σ(logit at the separator after step i)``. Eq. 1 of
arXiv 2505.14391 drops the leading minus sign as printed; this is the usual (positive) BCE, computed stably from logits
as ``softplus(z) - y z`` (what ``torch.nn.BCEWithLogitsLoss`` computes).

Option names follow TRL's ``PRMTrainer``: the separator positions come from ``step_separator`` at encoding time
(``stepjax.data.prm_encoding``); ``train_on_last_step_only`` keeps only the last labelled separator of each solution.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from stepjax.objectives.registry import register_loss
from stepjax.objectives.terms import LossTerms, Term, aggregate


def last_step_mask(step_mask: jax.Array, segment_ids: jax.Array | None = None) -> jax.Array:
    """1 at the last labelled position of each row (or of each packed segment ``1..S``, numbered left to right).

    Args:
      step_mask: ``[batch, len]`` 1 at labelled separator positions.
      segment_ids: ``[batch, len]`` packed-sample ids (0 = padding) or None.
    Returns:
      ``[batch, len]`` float32.
    """
    m = step_mask.astype(jnp.float32)
    seen = jnp.cumsum(m, axis=-1)  # labelled positions up to and including i
    if segment_ids is None:
        total = seen[:, -1:]
    else:
        # labelled positions up to the end of i's segment: the running count at the segment's last token
        same_next = jnp.concatenate([segment_ids[:, 1:] == segment_ids[:, :-1], jnp.zeros_like(m[:, :1], bool)], -1)
        seg_end_counts = jnp.where(same_next, jnp.inf, seen)
        total = jax.lax.cummin(seg_end_counts, axis=1, reverse=True)
    return m * (seen == total).astype(jnp.float32)


@register_loss("prm")
def prm_loss(
    logits: jax.Array,
    labels: jax.Array,
    step_mask: jax.Array,
    *,
    train_on_last_step_only: bool = False,
    segment_ids: jax.Array | None = None,
    aggregation: str = "token_mean",
) -> LossTerms:
    """Per-step BCE at separator positions.

    Args:
      logits: ``[batch, len]`` step-score logits (the PRM head's output before the sigmoid) at every position.
      labels: ``[batch, len]`` 0/1 step labels, read only where ``step_mask`` is 1.
      step_mask: ``[batch, len]`` 1 at the separator that closes each labelled step.
      train_on_last_step_only: only the last labelled separator of each row (segment) contributes.
      segment_ids, aggregation: see ``stepjax.objectives.terms.aggregate`` (``token_mean``: mean over labelled
        steps of the whole batch; ``sequence_mean``: each solution weighs the same).
    Returns:
      ``prm`` (the loss), ``prm/accuracy`` (threshold 0.5), ``prm/positive_rate`` (fraction of steps labelled 1).
    """
    mask = last_step_mask(step_mask, segment_ids) if train_on_last_step_only else step_mask.astype(jnp.float32)
    logits = logits.astype(jnp.float32)
    y = labels.astype(jnp.float32)
    bce = jax.nn.softplus(logits) - y * logits
    hit = ((logits > 0).astype(jnp.float32) == y).astype(jnp.float32)
    return {
        "prm": aggregate(bce, mask, aggregation, segment_ids=segment_ids),
        "prm/accuracy": Term((hit * mask).sum(), mask.sum()),
        "prm/positive_rate": Term((y * mask).sum(), mask.sum()),
    }

"""Supervised fine-tuning: masked negative log-likelihood of the target tokens over packed sequences.

From logits, ``stepjax.objectives.lm.lm_loss`` is the same objective (plus accuracy and z-loss); this form takes
per-token log-probs, like the preference and RL objectives, so a fused log-prob kernel can feed it.
"""

from __future__ import annotations

import jax

from stepjax.objectives.registry import register_loss
from stepjax.objectives.terms import LossTerms, aggregate


@register_loss("sft")
def sft_loss(
    log_probs: jax.Array,
    loss_mask: jax.Array,
    *,
    segment_ids: jax.Array | None = None,
    aggregation: str = "token_mean",
    constant: float = 1.0,
) -> LossTerms:
    """``{'sft': aggregate(-log_probs, loss_mask)}``.

    Args:
      log_probs: ``[batch, len]`` log-probs of the target tokens (``token_log_probs(logits, targets)``).
      loss_mask: ``[batch, len]`` tokens that are trained on (completion tokens; prompts and padding 0).
      segment_ids, aggregation, constant: see ``stepjax.objectives.terms.aggregate`` (``sequence_mean`` with
        ``segment_ids`` weighs every packed sample equally).
    """
    return {"sft": aggregate(-log_probs, loss_mask, aggregation, segment_ids=segment_ids, constant=constant)}

"""Next-token cross-entropy (pre-training and SFT)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from stepjax.objectives.registry import register_loss
from stepjax.objectives.terms import LossTerms, Term, aggregate


def token_log_probs(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """``log softmax(logits)[targets]``: ``[batch, len, vocab]``, ``[batch, len]`` -> ``[batch, len]`` float32."""
    logits = logits.astype(jnp.float32)
    target_logits = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return target_logits - jax.nn.logsumexp(logits, axis=-1)


@register_loss("lm")
def lm_loss(
    logits: jax.Array,
    targets: jax.Array,
    loss_mask: jax.Array,
    *,
    segment_ids: jax.Array | None = None,
    aggregation: str = "token_mean",
    z_loss: float = 0.0,
) -> LossTerms:
    """Cross-entropy of ``targets`` under ``logits`` on positions where ``loss_mask`` is 1.

    Args:
      logits: ``[batch, len, vocab]``; targets, loss_mask: ``[batch, len]`` (targets already shifted).
      aggregation: see ``stepjax.objectives.terms.aggregate``.
      z_loss: weight of ``logsumexp(logits)^2`` (PaLM-style logit drift control), 0 disables.
    Returns:
      ``{'lm': Term, 'accuracy': Term, 'z_loss': Term (only if z_loss > 0)}``.
    """
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    nll = lse - jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    correct = jnp.argmax(logits, -1) == targets
    return lm_loss_terms(nll, lse, correct, loss_mask, segment_ids=segment_ids, aggregation=aggregation, z_loss=z_loss)


def lm_loss_terms(
    nll: jax.Array,
    lse: jax.Array,
    correct: jax.Array | None,
    loss_mask: jax.Array,
    *,
    segment_ids: jax.Array | None = None,
    aggregation: str = "token_mean",
    z_loss: float = 0.0,
) -> LossTerms:
    """``lm_loss``'s terms from per-token quantities, however they were computed (full logits or a fused,
    vocabulary-chunked head: ``stepjax.kernels.fused_logprob`` gives ``nll = -logp`` and ``lse``).

    Args:
      nll: ``[batch, len]`` float32 ``-log p(target)``; lse: ``[batch, len]`` logsumexp of the logits (z-loss).
      correct: ``[batch, len]`` whether the target is the logits' argmax, or None to leave out ``accuracy``.
      loss_mask, segment_ids, aggregation, z_loss: as ``lm_loss``.
    Returns:
      ``{'lm', 'accuracy' (unless correct is None), 'z_loss' (only if z_loss > 0)}``.
    """
    terms = {"lm": aggregate(nll, loss_mask, aggregation, segment_ids=segment_ids)}
    if correct is not None:
        terms["accuracy"] = aggregate(correct.astype(jnp.float32), loss_mask, "token_mean")
    if z_loss:
        z = aggregate(jnp.square(lse), loss_mask, aggregation, segment_ids=segment_ids)
        terms["z_loss"] = Term(z.total * z_loss, z.denominator)
    return terms

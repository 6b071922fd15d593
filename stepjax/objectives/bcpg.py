"""BCPG and BCPG-NSA ("Unearthing Gems from Stones", arXiv 2505.14403): offline policy gradient with a squared
sequence log-ratio constraint, and a per-token weight ``beta`` on correct steps inside incorrect responses.

For ``G`` responses ``y_i`` of one prompt, sampled offline from ``pi_ref``, binary rewards ``r_i`` and their group
mean ``r_bar``::

    J = 1/G sum_i 1/|y_i| [ sum_j beta_ij (r_i - r_bar) log pi(y_ij | x, y_i<j)
                            - tau/2 (log pi(y_i | x) - log pi_ref(y_i | x))^2 ],      L = -J,

``beta_ij = beta`` on the tokens of steps judged correct inside responses with ``r_i <= 0``, else 1. ``beta = 1`` is
plain BCPG; ``beta < 0`` rewards the good steps of failures. No importance ratio, no clip; the constraint is the
squared *sequence* log-ratio, divided by ``|y_i|`` like the policy-gradient part (it grows with length: keep ``tau``
small, compute in float32). RFT, the usual baseline, is SFT on the positive responses: ``sft_loss`` with
``loss_mask = mask * (rewards > 0)[:, None]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from stepjax.objectives.registry import register_loss
from stepjax.objectives.terms import LossTerms, Term

BCPG_AGGREGATIONS = ("sequence_mean", "token_mean")


def group_mean_baselines(rewards: jax.Array, group_ids: jax.Array) -> jax.Array:
    """``r_bar`` of each response: the mean reward of its group (responses sharing a ``group_ids`` value).

    Args:
      rewards, group_ids: ``[batch]``; ids are any non-negative ints below ``batch`` (e.g. the prompt index).
    Returns:
      ``[batch]`` float32.
    """
    rewards = rewards.astype(jnp.float32)
    n = rewards.shape[0]
    sums = jax.ops.segment_sum(rewards, group_ids, n)
    counts = jax.ops.segment_sum(jnp.ones_like(rewards), group_ids, n)
    return (sums / jnp.maximum(counts, 1.0))[group_ids]


def nsa_token_weights(
    mask: jax.Array, positive_step_mask: jax.Array, rewards: jax.Array, beta: float
) -> tuple[jax.Array, jax.Array]:
    """``(beta_ij [batch, len], gated step mask [batch, len])``: ``beta`` where a token is a response token, marked
    as part of a correct step, and its response is negative (``r <= 0``); 1 elsewhere. The gate makes marks on
    positive responses or on padding inert."""
    negative = (rewards <= 0.0)[:, None]
    gated = mask.astype(jnp.float32) * positive_step_mask.astype(jnp.float32) * negative
    return jnp.where(gated > 0, jnp.float32(beta), jnp.float32(1.0)), gated


@register_loss("bcpg")
def bcpg_loss(
    log_probs: jax.Array,
    ref_log_probs: jax.Array,
    mask: jax.Array,
    rewards: jax.Array,
    *,
    positive_step_mask: jax.Array | None = None,
    group_ids: jax.Array | None = None,
    baselines: jax.Array | None = None,
    beta: float = 1.0,
    tau: float = 1e-3,
    aggregation: str = "sequence_mean",
) -> LossTerms:
    """BCPG-NSA loss ``-J`` of one-response-per-row batches.

    Args:
      log_probs: ``[batch, len]`` response-token log-probs under the policy being trained.
      ref_log_probs: ``[batch, len]`` the same tokens under ``pi_ref`` (computed offline; no gradient).
      mask: ``[batch, len]`` response tokens (prompt and padding 0).
      rewards: ``[batch]`` binary answer rewards ``r_i``.
      positive_step_mask: ``[batch, len]`` 1 on tokens of steps judged correct (``I = 1``); only counts inside
        negative responses (``nsa_token_weights``). None: plain BCPG.
      group_ids, baselines: ``r_bar`` either as ``baselines [batch]`` (precomputed over whole groups: exact under any
        batching) or from ``group_ids [batch]`` (every group must be whole inside this batch). Exactly one.
      beta: weight of correct-step tokens in negatives (1: BCPG; the paper's NSA uses 0.5).
      tau: weight of the squared sequence log-ratio constraint.
      aggregation: ``sequence_mean`` (the paper: each response's sum over ``|y_i|``, mean over responses) or
        ``token_mean`` (sums over all response tokens).
    Returns:
      ``{'bcpg': loss, 'policy_loss', 'constraint' (the tau/2 term alone), 'log_ratio' (mean sequence log-ratio),
      'advantage' (mean r - r_bar), 'correct_step_log_prob' (mean policy log-prob of the gated correct-step tokens)}``.
      Only ``bcpg`` is a loss; all are exact under micro-batching when ``baselines`` are given.
    """
    if aggregation not in BCPG_AGGREGATIONS:
        raise ValueError(f"unknown BCPG aggregation {aggregation!r}; expected one of {BCPG_AGGREGATIONS}")
    if (group_ids is None) == (baselines is None):
        raise ValueError("bcpg_loss needs exactly one of group_ids (r_bar from this batch) or baselines (r_bar given)")
    if log_probs.shape != mask.shape or ref_log_probs.shape != mask.shape:
        raise ValueError(
            f"log_probs {log_probs.shape}, ref_log_probs {ref_log_probs.shape} and mask {mask.shape} must match"
        )
    if rewards.shape != mask.shape[:1]:
        raise ValueError(f"rewards must be [batch] = {mask.shape[:1]}, got {rewards.shape}")
    mask = mask.astype(jnp.float32)
    log_probs = log_probs.astype(jnp.float32)
    rewards = jax.lax.stop_gradient(rewards).astype(jnp.float32)
    ref = jax.lax.stop_gradient(ref_log_probs).astype(jnp.float32)
    r_bar = group_mean_baselines(rewards, group_ids) if baselines is None else baselines.astype(jnp.float32)
    advantage = jax.lax.stop_gradient(rewards - r_bar)
    step_mask = jnp.zeros_like(mask) if positive_step_mask is None else positive_step_mask
    weights, gated = nsa_token_weights(mask, step_mask, rewards, beta)

    lengths = mask.sum(-1)
    present = (lengths > 0).astype(jnp.float32)
    pg = -(weights * advantage[:, None] * log_probs * mask).sum(-1)  # [batch]
    seq_log_ratio = ((log_probs - ref) * mask).sum(-1)
    constraint = 0.5 * tau * jnp.square(seq_log_ratio)
    if aggregation == "sequence_mean":
        scale = present / jnp.maximum(lengths, 1.0)  # 1/|y_i|, 0 for empty rows
        denominator = present.sum()
    else:
        scale = present
        denominator = lengths.sum()

    def term(per_sequence: jax.Array) -> Term:
        return Term((per_sequence * scale).sum(), denominator)

    n = present.sum()
    stats = jax.lax.stop_gradient
    return {
        "bcpg": term(pg + constraint),
        "policy_loss": term(pg),
        "constraint": term(constraint),
        "log_ratio": Term(stats(seq_log_ratio * present).sum(), n),
        "advantage": Term(stats(advantage * present).sum(), n),
        "correct_step_log_prob": Term(stats(log_probs * gated).sum(), gated.sum()),
    }

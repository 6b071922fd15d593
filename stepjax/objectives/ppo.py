"""PPO: clipped policy loss (asymmetric and dual clip), clipped value loss, entropy bonus, KL penalty.

Token-level MDP: each response token is an action; ``log_probs``, ``advantages``, ``values`` are ``[batch, len]``
aligned with the action tokens (the shifted ``targets`` layout of ``stepjax.objectives.lm``), ``mask`` marks them.
Open-Reasoner-Zero's settings: ``clip_eps=0.2``, ``value_clip=0.2``, no KL, no entropy, per-row token means
(``aggregation='sequence_mean'`` without ``segment_ids`` treats each packed row as one sequence).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from stepjax.objectives.kl import kl_penalty
from stepjax.objectives.registry import register_loss
from stepjax.objectives.terms import LossTerms, aggregate


class Surrogate(NamedTuple):
    """Per-token clipped policy-gradient loss and where each clip was active (float 0/1 masks)."""

    loss: jax.Array
    low_clipped: jax.Array  # ratio < 1 - eps_low with a negative advantage (the clip holds the loss)
    high_clipped: jax.Array  # ratio > 1 + eps_high with a positive advantage
    dual_clipped: jax.Array  # the dual clip bound -c * A is the loss (negative advantages only)


def clipped_surrogate(
    ratio: jax.Array,
    advantages: jax.Array,
    eps_low: float,
    eps_high: float,
    *,
    dual_clip: float | None = None,
    delta: float | None = None,
) -> Surrogate:
    """``-min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A)`` per token.

    Args:
      ratio: ``pi / pi_old`` (any broadcastable shape, e.g. ``[batch, len]`` or ``[batch, 1]`` for GSPO).
      advantages: broadcastable to ``ratio``.
      dual_clip: ``c > 1`` (Ye et al. 2020): for negative advantages the loss is at most ``-c * A``, so a huge ratio
        on a bad action cannot blow the loss up.
      delta: two-sided clipping (TRL ``delta``): the unclipped ratio is capped at ``delta`` as well.
    """
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1 (it bounds -c * A for negative advantages), got {dual_clip}")
    clipped_ratio = jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high)
    if delta is not None:
        ratio = jnp.minimum(ratio, delta)
    loss = -jnp.minimum(ratio * advantages, clipped_ratio * advantages)
    dual = jnp.zeros_like(loss)
    if dual_clip is not None:
        bound = -dual_clip * advantages
        dual = ((advantages < 0) & (bound < loss)).astype(jnp.float32)
        loss = jnp.where(advantages < 0, jnp.minimum(loss, bound), loss)
    low = ((ratio < 1.0 - eps_low) & (advantages < 0)).astype(jnp.float32)
    high = ((ratio > 1.0 + eps_high) & (advantages > 0)).astype(jnp.float32)
    return Surrogate(loss, low, high, dual)


@register_loss("ppo")
def ppo_policy_loss(
    log_probs: jax.Array,
    old_log_probs: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    dual_clip: float | None = None,
    entropy: jax.Array | None = None,
    entropy_coef: float = 0.0,
    ref_log_probs: jax.Array | None = None,
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
    aggregation: str = "token_mean",
    segment_ids: jax.Array | None = None,
    constant: float = 1.0,
) -> LossTerms:
    """PPO policy loss with the KL penalty and entropy bonus folded in.

    Args:
      log_probs: ``[batch, len]`` action log-probs under the policy being trained.
      old_log_probs: the same under the rollout policy (no gradient).
      advantages: ``[batch, len]`` (e.g. GAE, whitened) — no gradient.
      mask: ``[batch, len]`` action tokens.
      clip_eps / clip_eps_high: ratio clip ``[1 - clip_eps, 1 + clip_eps_high]`` (``clip_eps_high`` defaults to
        ``clip_eps``; DAPO's clip-higher sets it larger).
      dual_clip: ``c > 1`` enables dual clipping for negative advantages.
      entropy: ``[batch, len]`` per-token policy entropy; with ``entropy_coef`` the loss subtracts
        ``entropy_coef * H``.
      ref_log_probs: reference-policy log-probs; with ``kl_coef`` the loss adds ``kl_coef * KL`` (KL in the loss;
        for KL in the reward use ``stepjax.objectives.kl.kl_shaped_rewards``).
      aggregation, segment_ids, constant: see ``stepjax.objectives.terms.aggregate``.
    Returns:
      ``{'ppo': loss, 'loss/policy_avg': clipped surrogate alone, 'policy/clipfrac_avg', 'policy/approxkl_avg',
      'policy/dual_clipfrac_avg' (with dual clip), 'policy/entropy_avg' (with entropy), 'policy/kl_ref_avg'
      (with ref_log_probs)}``. Only ``ppo`` is a loss; the rest are token-mean metrics.
    """
    mask = mask.astype(jnp.float32)
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    log_ratio = log_probs.astype(jnp.float32) - jax.lax.stop_gradient(old_log_probs).astype(jnp.float32)
    adv = jax.lax.stop_gradient(advantages).astype(jnp.float32)
    surrogate = clipped_surrogate(jnp.exp(log_ratio), adv, clip_eps, eps_high, dual_clip=dual_clip)
    per_token = surrogate.loss
    agg = dict(segment_ids=segment_ids, constant=constant)
    terms: LossTerms = {"loss/policy_avg": aggregate(surrogate.loss, mask, aggregation, **agg)}
    if ref_log_probs is not None:
        kl = kl_penalty(log_probs, ref_log_probs, kl_estimator)
        per_token = per_token + kl_coef * kl
        terms["policy/kl_ref_avg"] = aggregate(jax.lax.stop_gradient(kl), mask, "token_mean")
    elif kl_coef:
        raise ValueError("kl_coef > 0 needs ref_log_probs (the reference policy's log-probs of the actions)")
    if entropy is not None:
        per_token = per_token - entropy_coef * entropy.astype(jnp.float32)
        terms["policy/entropy_avg"] = aggregate(jax.lax.stop_gradient(entropy), mask, "token_mean")
    elif entropy_coef:
        raise ValueError("entropy_coef > 0 needs the per-token entropy")
    terms["ppo"] = aggregate(per_token, mask, aggregation, **agg)
    stats = jax.lax.stop_gradient
    terms["policy/clipfrac_avg"] = aggregate(stats(surrogate.low_clipped + surrogate.high_clipped), mask)
    terms["policy/approxkl_avg"] = aggregate(stats(0.5 * jnp.square(log_ratio)), mask)  # TRL's approxkl
    if dual_clip is not None:
        terms["policy/dual_clipfrac_avg"] = aggregate(stats(surrogate.dual_clipped), mask)
    return terms


@register_loss("ppo_value")
def value_loss(
    values: jax.Array,
    old_values: jax.Array,
    returns: jax.Array,
    mask: jax.Array,
    *,
    value_clip: float | None = 0.2,
    aggregation: str = "token_mean",
    segment_ids: jax.Array | None = None,
    constant: float = 1.0,
) -> LossTerms:
    """``0.5 * max((V_clip - G)^2, (V - G)^2)`` with ``V_clip = V_old + clip(V - V_old, +-value_clip)``.

    Args:
      values: ``[batch, len]`` critic values being trained; old_values: the rollout-time values; returns: targets G.
      value_clip: None disables clipping (``0.5 * (V - G)^2``, the ORZ paper's form).
    Returns:
      ``{'value': loss, 'val/clipfrac_avg': fraction of tokens where the clipped error was the larger one}``.
    """
    values = values.astype(jnp.float32)
    returns = jax.lax.stop_gradient(returns).astype(jnp.float32)
    unclipped = jnp.square(values - returns)
    if value_clip is None:
        per_token, clipped = 0.5 * unclipped, jnp.zeros_like(unclipped)
    else:
        old = jax.lax.stop_gradient(old_values).astype(jnp.float32)
        clipped_err = jnp.square(old + jnp.clip(values - old, -value_clip, value_clip) - returns)
        per_token = 0.5 * jnp.maximum(clipped_err, unclipped)
        clipped = (clipped_err > unclipped).astype(jnp.float32)
    agg = dict(segment_ids=segment_ids, constant=constant)
    return {
        "value": aggregate(per_token, mask, aggregation, **agg),
        "val/clipfrac_avg": aggregate(jax.lax.stop_gradient(clipped), mask),
    }


def explained_variance(values: jax.Array, returns: jax.Array, mask: jax.Array) -> jax.Array:
    """``1 - Var(G - V) / Var(G)`` over valid tokens (1: perfect critic, 0: no better than a constant)."""
    mask = mask.astype(jnp.float32)
    n = jnp.maximum(mask.sum(), 1.0)

    def var(x):
        mean = (x * mask).sum() / n
        return (jnp.square(x - mean) * mask).sum() / n

    returns = returns.astype(jnp.float32)
    return 1.0 - var(returns - values.astype(jnp.float32)) / jnp.maximum(var(returns), 1e-12)

"""GRPO family: clipped policy loss on group advantages, KL to a reference, every aggregation, GSPO ratios.

One function covers TRL's ``loss_type`` grpo / bnpo / dr_grpo / dapo (they differ only in aggregation; see
``TRL_LOSS_TYPES``), Tunix's ``loss_agg_mode`` names, DAPO's clip-higher (``epsilon_high``), TRL's two-sided
``delta`` and dual clip, and GSPO (``importance_sampling_level='sequence'``: one ratio per sequence, the geometric
mean of its token ratios, clipped at sequence level). Advantages come from ``stepjax.rl.advantages``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from stepjax.objectives.kl import kl_penalty
from stepjax.objectives.ppo import clipped_surrogate
from stepjax.objectives.registry import register_loss
from stepjax.objectives.terms import AGGREGATIONS, LossTerms, aggregate, broadcast_sequences, sequence_totals

#: TRL ``GRPOConfig.loss_type`` -> aggregation (``dr_grpo`` needs ``constant = max_completion_length``).
TRL_LOSS_TYPES = {"grpo": "sequence_mean", "bnpo": "token_mean", "dapo": "token_mean", "dr_grpo": "constant"}
#: Tunix / verl ``loss_agg_mode`` names.
AGGREGATION_ALIASES = {
    "token-mean": "token_mean",
    "sequence-mean-token-mean": "sequence_mean",
    "seq-mean-token-mean": "sequence_mean",
    "sequence-mean-token-sum": "sequence_sum",
    "seq-mean-token-sum": "sequence_sum",
}
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence", "sequence_token")


def resolve_aggregation(name: str) -> str:
    """Our aggregation name for ``name``, a Tunix alias or a TRL ``loss_type``."""
    resolved = AGGREGATION_ALIASES.get(name, TRL_LOSS_TYPES.get(name, name))
    if resolved not in AGGREGATIONS:
        choices = sorted({*AGGREGATIONS, *AGGREGATION_ALIASES, *TRL_LOSS_TYPES})
        raise ValueError(f"unknown aggregation {name!r}; expected one of {choices}")
    return resolved


def _log_importance_weights(
    log_ratio: jax.Array, mask: jax.Array, level: str, segment_ids: jax.Array | None
) -> jax.Array:
    """Per-token log importance weights ``[batch, len]`` for the chosen sampling level."""
    if level == "token":
        return log_ratio
    # GSPO: s_i = (prod_t pi/pi_old)^(1/|y_i|), i.e. the mean token log-ratio of each sequence (packed sample).
    sums, counts = sequence_totals(log_ratio, mask, segment_ids)
    seq = broadcast_sequences(sums / jnp.maximum(counts, 1.0), segment_ids, log_ratio.shape[1])
    if level == "sequence":
        return seq
    # GSPO-token: value of the sequence ratio, gradient of each token's own log-prob (Tunix ``gspo-token``).
    return jax.lax.stop_gradient(seq) + log_ratio - jax.lax.stop_gradient(log_ratio)


@register_loss("grpo")
def grpo_loss(
    log_probs: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    old_log_probs: jax.Array | None = None,
    ref_log_probs: jax.Array | None = None,
    beta: float = 0.0,
    kl_estimator: str = "k3",
    kl_importance_correction: bool = False,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    delta: float | None = None,
    dual_clip: float | None = None,
    importance_sampling_level: str = "token",
    aggregation: str = "token_mean",
    max_completion_length: int | None = None,
    segment_ids: jax.Array | None = None,
    entropy: jax.Array | None = None,
    entropy_coef: float = 0.0,
) -> LossTerms:
    """GRPO policy loss ``agg(-min(s A, clip(s, 1 - eps, 1 + eps_high) A) + beta KL)``.

    Args:
      log_probs: ``[batch, len]`` completion-token log-probs under the policy being trained.
      advantages: ``[batch]`` (one per completion, unpacked rows) or ``[batch, len]`` per token (packed rows).
      mask: ``[batch, len]`` completion tokens.
      old_log_probs: rollout-policy log-probs; None means on-policy (``stop_gradient(log_probs)``: ratio 1, the
        gradient of the plain policy gradient).
      ref_log_probs, beta, kl_estimator: KL penalty to a reference, added per token before aggregation (TRL: k3).
      kl_importance_correction: multiply the KL by the importance weight (TRL ``use_bias_correction_kl``).
      epsilon, epsilon_high: asymmetric clip range (``epsilon_high`` defaults to ``epsilon``; DAPO uses 0.28).
      delta: cap on the unclipped ratio (TRL two-sided clipping); dual_clip: ``c > 1`` for negative advantages.
      importance_sampling_level: ``token`` (GRPO), ``sequence`` (GSPO) or ``sequence_token`` (GSPO-token).
      aggregation: ``token_mean``, ``sequence_mean``, ``sequence_sum``, ``constant`` (Dr. GRPO), a Tunix alias or a
        TRL ``loss_type`` (see ``resolve_aggregation``).
      max_completion_length: the constant of ``constant`` aggregation (denominator = rows x this).
      segment_ids: packed completions (``1..S``, 0 = padding); sequence-level ratios and means follow them.
      entropy, entropy_coef: optional entropy bonus (``- entropy_coef * H`` with the same aggregation).
    Returns:
      ``{'grpo': loss, 'policy_loss': clipped surrogate alone, 'kl' (with a reference), 'entropy' (if given),
      'clip_ratio/low_mean', 'clip_ratio/high_mean', 'clip_ratio/region_mean'}`` (TRL's metric names; the metrics
      are token means). Only ``grpo`` is a loss.
    """
    if importance_sampling_level not in IMPORTANCE_SAMPLING_LEVELS:
        raise ValueError(
            f"unknown importance_sampling_level {importance_sampling_level!r}; "
            f"expected one of {IMPORTANCE_SAMPLING_LEVELS}"
        )
    mode = resolve_aggregation(aggregation)
    if mode == "constant" and max_completion_length is None:
        raise ValueError("aggregation 'constant' (Dr. GRPO) needs max_completion_length")
    mask = mask.astype(jnp.float32)
    log_probs = log_probs.astype(jnp.float32)
    old = jax.lax.stop_gradient(log_probs if old_log_probs is None else old_log_probs.astype(jnp.float32))
    adv = jax.lax.stop_gradient(advantages).astype(jnp.float32)
    if adv.ndim == 1:
        if segment_ids is not None:
            raise ValueError("packed rows (segment_ids) need per-token advantages [batch, len], got [batch]")
        adv = adv[:, None]
    log_w = _log_importance_weights(log_probs - old, mask, importance_sampling_level, segment_ids)
    ratio = jnp.exp(log_w)
    eps_high = epsilon if epsilon_high is None else epsilon_high
    surrogate = clipped_surrogate(ratio, adv, epsilon, eps_high, dual_clip=dual_clip, delta=delta)
    per_token = jnp.broadcast_to(surrogate.loss, mask.shape)
    agg = dict(segment_ids=segment_ids, constant=float(max_completion_length or 1))
    terms: LossTerms = {"policy_loss": aggregate(per_token, mask, mode, **agg)}
    if beta:
        if ref_log_probs is None:
            raise ValueError("beta > 0 needs ref_log_probs (the reference policy's log-probs of the completions)")
        kl = kl_penalty(log_probs, ref_log_probs, kl_estimator)
        if kl_importance_correction:
            kl = kl * ratio
        per_token = per_token + beta * kl
        terms["kl"] = aggregate(jax.lax.stop_gradient(kl), mask, "token_mean")
    if entropy is not None:
        per_token = per_token - entropy_coef * entropy.astype(jnp.float32)
        terms["entropy"] = aggregate(jax.lax.stop_gradient(entropy), mask, "token_mean")
    elif entropy_coef:
        raise ValueError("entropy_coef > 0 needs the per-token entropy")
    terms["grpo"] = aggregate(per_token, mask, mode, **agg)
    low = jnp.broadcast_to(surrogate.low_clipped, mask.shape)
    high = jnp.broadcast_to(surrogate.high_clipped, mask.shape)
    # Token-level clipping is counted per token, sequence-level clipping per sequence (as TRL logs them).
    stat = dict(mode="token_mean") if importance_sampling_level == "token" else dict(mode="sequence_mean", **agg)
    terms["clip_ratio/low_mean"] = aggregate(low, mask, **stat)
    terms["clip_ratio/high_mean"] = aggregate(high, mask, **stat)
    terms["clip_ratio/region_mean"] = aggregate(jnp.maximum(low, high), mask, **stat)
    return terms

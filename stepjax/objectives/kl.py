"""Per-token KL estimators between the policy and a reference (Schulman's k1/k2/k3).

With ``r = log pi_ref - log pi`` evaluated on tokens sampled from ``pi`` (or ``pi_old``):
  ``k1 = -r = log pi - log pi_ref`` (unbiased, high variance, can be negative),
  ``k2 = r^2 / 2`` (biased, low variance; also called ``mse`` / ``kimi``),
  ``k3 = exp(r) - r - 1`` (unbiased, low variance, always >= 0; ``low_var_kl``; TRL and Tunix GRPO use it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

KL_ESTIMATORS = ("k1", "k2", "k3")
# Names other libraries use for the same estimators (Tunix: kl / mse_kl / low_var_kl; Perception-R1: kimikl).
_ALIASES = {"kl": "k1", "mse": "k2", "mse_kl": "k2", "kimi": "k2", "kimikl": "k2", "low_var_kl": "k3"}


def resolve_kl_estimator(name: str) -> str:
    """Canonical estimator name (``k1``, ``k2``, ``k3``) for ``name`` or one of its aliases."""
    canonical = _ALIASES.get(name, name)
    if canonical not in KL_ESTIMATORS:
        raise ValueError(
            f"unknown KL estimator {name!r}; expected one of {KL_ESTIMATORS} or aliases {sorted(_ALIASES)}"
        )
    return canonical


def kl_penalty(
    log_probs: jax.Array, ref_log_probs: jax.Array, estimator: str = "k3", *, clamp: float | None = None
) -> jax.Array:
    """Per-token KL estimate of ``KL(pi || pi_ref)``.

    Args:
      log_probs: ``[...]`` log-probs of the sampled tokens under the policy being trained.
      ref_log_probs: the same tokens under the reference policy (no gradient flows into it).
      estimator: ``k1``, ``k2``, ``k3`` or an alias (see module docstring).
      clamp: optional symmetric bound on the estimate (verl/Tunix clamp k3 to +-10 against outliers).
    Returns:
      ``[...]`` float32 per-token estimates (mask them yourself).
    """
    estimator = resolve_kl_estimator(estimator)
    log_ratio = jax.lax.stop_gradient(ref_log_probs).astype(jnp.float32) - log_probs.astype(jnp.float32)
    if estimator == "k1":
        kl = -log_ratio
    elif estimator == "k2":
        kl = 0.5 * jnp.square(log_ratio)
    else:
        kl = jnp.exp(log_ratio) - log_ratio - 1.0
    if clamp is not None:
        kl = jnp.clip(kl, -clamp, clamp)
    return kl


def kl_shaped_rewards(
    rewards: jax.Array,
    log_probs: jax.Array,
    ref_log_probs: jax.Array,
    mask: jax.Array,
    kl_coef: float,
    estimator: str = "k1",
    *,
    clamp: float | None = None,
) -> jax.Array:
    """KL penalty in the reward (InstructGPT / OpenRLHF style): ``r_t - kl_coef * kl_t`` on valid tokens.

    Args:
      rewards: ``[batch, len]`` per-token rewards (e.g. the terminal reward on each sample's last token).
      log_probs, ref_log_probs: ``[batch, len]`` sampled tokens under the rollout policy and the reference.
      mask: ``[batch, len]`` valid (action) tokens; the penalty is zero elsewhere.
    Returns:
      ``[batch, len]`` shaped rewards, without gradient (rewards are data, not a loss).
    """
    kl = kl_penalty(jax.lax.stop_gradient(log_probs), ref_log_probs, estimator, clamp=clamp)
    return jax.lax.stop_gradient(rewards.astype(jnp.float32) - kl_coef * kl * mask.astype(jnp.float32))

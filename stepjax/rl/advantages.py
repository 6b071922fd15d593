"""Advantage estimators: GAE as one reverse scan (token sequences and environment rollouts), whitening, group
advantages (GRPO, Dr. GRPO, RLOO).

GAE: ``delta_t = r_t + gamma * V(s_{t+1}) - V(s_t)``, ``A_t = delta_t + gamma * lam * A_{t+1}``, restarted at every
sample (or episode) boundary, where the next value is 0 (token sequences: the sample ended) or the bootstrap value
(environment rollouts cut at the horizon). Returns ``G_t = A_t + V(s_t)``. With ``gamma = lam = 1`` and one terminal
reward R, ``A_t = R - V(s_t)`` and ``G_t = R`` (Open-Reasoner-Zero).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from stepjax.rl.registry import ADVANTAGES

SCALES = ("group", "batch", "none")


def _gae_scan(rewards, values, valid, seg, init_value, init_seg, gamma, lam):
    """Time-major ``[T, N]`` reverse scan. ``seg`` labels which trajectory each step belongs to: the next valid step
    continues the trajectory only when its label is equal; invalid steps are skipped (their output is 0)."""

    def step(carry, xs):
        next_adv, next_value, next_seg = carry
        r, v, ok, s = xs
        cont = (s == next_seg).astype(jnp.float32)
        delta = r + gamma * cont * next_value - v
        adv = delta + gamma * lam * cont * next_adv
        carry = (jnp.where(ok, adv, next_adv), jnp.where(ok, v, next_value), jnp.where(ok, s, next_seg))
        return carry, jnp.where(ok, adv, 0.0)

    init = (jnp.zeros_like(init_value), init_value, init_seg)
    _, adv = jax.lax.scan(step, init, (rewards, values, valid, seg), reverse=True)
    return adv, jnp.where(valid, adv + values, 0.0)


@ADVANTAGES.register("gae")
def gae_advantages(
    rewards: jax.Array,
    values: jax.Array,
    mask: jax.Array,
    *,
    gamma: float = 1.0,
    lam: float = 1.0,
    segment_ids: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """GAE over token sequences ``[batch, len]`` (actions = positions where ``mask`` is 1).

    The next state of an action is the next valid position of the same sample (prompt tokens, padding and other
    masked positions in between are skipped); after a sample's last valid position the value is 0. Samples are rows,
    or packed samples when ``segment_ids`` are given. Rewards must sit on valid positions (typically the terminal
    reward on each sample's last response token); rewards at masked positions are ignored.

    Args:
      rewards, values: ``[batch, len]``; values are the critic's ``V(s_t)`` at each action (no gradient).
      mask: ``[batch, len]`` action tokens.
      gamma, lam: discount and GAE lambda (ORZ: 1, 1).
      segment_ids: ``[batch, len]`` packed-sample ids (0 = padding).
    Returns:
      ``(advantages, returns)``, each ``[batch, len]`` float32, 0 off the mask.
    """
    rewards = jax.lax.stop_gradient(rewards).astype(jnp.float32)
    values = jax.lax.stop_gradient(values).astype(jnp.float32) * (mask > 0)
    seg = jnp.zeros(rewards.shape, jnp.int32) if segment_ids is None else segment_ids.astype(jnp.int32)
    batch = rewards.shape[0]
    adv, ret = _gae_scan(
        rewards.T,
        values.T,
        (mask > 0).T,
        seg.T,
        jnp.zeros((batch,), jnp.float32),
        jnp.full((batch,), -1, jnp.int32),  # matches no segment: the last sample ends in a terminal state
        gamma,
        lam,
    )
    return adv.T, ret.T


def gae_env(
    rewards: jax.Array,
    values: jax.Array,
    dones: jax.Array,
    last_value: jax.Array,
    *,
    gamma: float = 0.99,
    lam: float = 0.95,
) -> tuple[jax.Array, jax.Array]:
    """GAE over environment rollouts ``[time, envs]`` (the same scan as ``gae_advantages``).

    Args:
      rewards, values: ``[time, envs]``: ``r_t`` and ``V(s_t)``.
      dones: ``[time, envs]``, 1 where the episode terminated with step ``t`` (the next value is then 0).
      last_value: ``[envs]`` ``V(s_T)`` of the state after the last step (bootstrap for unfinished episodes).
    Returns:
      ``(advantages, returns)``, each ``[time, envs]`` float32.
    """
    dones = dones.astype(jnp.int32)
    episode = jnp.cumsum(dones, axis=0) - dones  # episodes finished strictly before step t
    return _gae_scan(
        jax.lax.stop_gradient(rewards).astype(jnp.float32),
        jax.lax.stop_gradient(values).astype(jnp.float32),
        jnp.ones(rewards.shape, bool),
        episode,
        jax.lax.stop_gradient(last_value).astype(jnp.float32),
        dones.sum(0),  # equals the last step's episode unless it terminated
        gamma,
        lam,
    )


def whiten(x: jax.Array, mask: jax.Array, *, eps: float = 1e-8, shift_mean: bool = True) -> jax.Array:
    """``(x - mean) / sqrt(max(var, eps))`` over all valid entries of the batch (ORZ advantage whitening; population
    variance). ``shift_mean=False`` adds the mean back (TRL's reward whitening). 0 off the mask."""
    mask = mask.astype(jnp.float32)
    x = x.astype(jnp.float32)
    n = jnp.maximum(mask.sum(), 1.0)
    mean = (x * mask).sum() / n
    var = (jnp.square(x - mean) * mask).sum() / n
    out = (x - mean) * jax.lax.rsqrt(jnp.maximum(var, eps))
    if not shift_mean:
        out = out + mean
    return out * mask


def group_advantages(
    rewards: jax.Array,
    group_size: int,
    *,
    scale: str = "group",
    eps: float = 1e-4,
    ddof: int = 1,
    baseline: str = "mean",
) -> jax.Array:
    """Advantages of ``group_size`` completions per prompt, groups consecutive: ``[N] -> [N]``.

    ``A = (r - baseline) / (std + eps)``; ``baseline`` is the group mean (GRPO) or the mean of the other completions
    (``leave_one_out``, RLOO); ``std`` is taken per group (``scale='group'``, TRL's default), over the whole batch
    (``'batch'``) or not at all (``'none'``: Dr. GRPO, and ORZ's GRPO baseline before its batch whitening). ``eps`` and
    ``ddof`` follow TRL (1e-4, unbiased std); Tunix uses 1e-6.
    """
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; expected one of {SCALES}")
    if baseline not in ("mean", "leave_one_out"):
        raise ValueError(f"unknown baseline {baseline!r}; expected 'mean' or 'leave_one_out'")
    rewards = jnp.asarray(rewards, jnp.float32)
    if rewards.ndim != 1 or rewards.shape[0] % group_size:
        raise ValueError(f"rewards must be [N] with N a multiple of group_size {group_size}, got {rewards.shape}")
    groups = rewards.reshape(-1, group_size)
    mean = groups.mean(-1, keepdims=True)
    centred = groups - mean
    if baseline == "leave_one_out":
        if group_size < 2:
            raise ValueError("the leave-one-out baseline needs group_size >= 2")
        centred = centred * group_size / (group_size - 1)  # r_i - mean_{j != i} r_j
    if scale == "none":
        return centred.reshape(-1)

    def std(x, axis):
        n = x.size if axis is None else x.shape[axis]
        if n - ddof <= 0:
            return jnp.zeros(())  # a single completion: nothing to scale by (TRL uses 0)
        var = jnp.square(x - x.mean(axis=axis, keepdims=True)).sum(axis=axis, keepdims=True) / (n - ddof)
        return jnp.sqrt(var)

    spread = std(groups, -1) if scale == "group" else std(rewards, None)
    return (centred / (spread + eps)).reshape(-1)


ADVANTAGES.register("grpo")(group_advantages)


@ADVANTAGES.register("dr_grpo")
def dr_grpo_advantages(rewards: jax.Array, group_size: int, **kw) -> jax.Array:
    """Group-mean-centred rewards without std scaling (Dr. GRPO)."""
    return group_advantages(rewards, group_size, scale="none", **kw)


@ADVANTAGES.register("rloo")
def rloo_advantages(rewards: jax.Array, group_size: int, **kw) -> jax.Array:
    """``r_i - mean_{j != i} r_j`` (REINFORCE leave-one-out)."""
    return group_advantages(rewards, group_size, scale="none", baseline="leave_one_out", **kw)


def terminal_rewards(scores: jax.Array, mask: jax.Array, segment_ids: jax.Array | None = None) -> jax.Array:
    """Places each sample's scalar reward on its last valid token: ``[batch, len]`` per-token rewards.

    Args:
      scores: ``[batch]`` (one sample per row) or, with ``segment_ids``, ``[batch, S]`` (slot ``s`` = segment
        ``s + 1``, the layout of ``stepjax.objectives.terms.sequence_totals``).
      mask: ``[batch, len]`` action tokens.
    """
    valid = mask > 0
    seg = jnp.ones(mask.shape, jnp.int32) if segment_ids is None else segment_ids.astype(jnp.int32)
    # A valid token is last when no later valid token belongs to the same sample.
    _, later = jax.lax.scan(
        lambda nxt, xs: (jnp.where(xs[0], xs[1], nxt), nxt),
        jnp.full((mask.shape[0],), -1, jnp.int32),
        (valid.T, seg.T),
        reverse=True,
    )
    last = valid & (seg != later.T)
    per_sample = scores[:, None] if segment_ids is None else jnp.take_along_axis(scores, jnp.maximum(seg - 1, 0), 1)
    return jnp.where(last, jnp.broadcast_to(per_sample, mask.shape), 0.0).astype(jnp.float32)

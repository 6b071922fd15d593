"""Measuring imitation: random-policy baselines, normalised scores, environment steps to a threshold, and the
correlation of a learned reward with the true one along given transitions."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from stepjax.rl.env_ppo import PolicyFn, Transition
from stepjax.rl.envs.base import Box, Environment
from stepjax.rl.envs.wrappers import AutoReset


def _random_action(key: jax.Array, space, shape: tuple[int, ...]) -> jax.Array:
    if isinstance(space, Box):
        low, high = jnp.asarray(space.low), jnp.asarray(space.high)
        return jax.random.uniform(key, (*shape, *space.shape), jnp.float32, low, high)
    return jax.random.randint(key, shape, 0, space.n)


def random_returns(env: Environment, key: jax.Array, num_episodes: int) -> np.ndarray:
    """True returns of a uniformly random policy, ``[num_episodes]`` (whole episodes; ``env`` needs a time limit)."""
    env = env.env if isinstance(env, AutoReset) else env

    @jax.jit
    def run(key):
        k_reset, k_run = jax.random.split(key)
        _, state = jax.vmap(env.reset)(jax.random.split(k_reset, num_episodes))

        def step(carry, key):
            state, alive, total = carry
            k_act, k_env = jax.random.split(key)
            action = _random_action(k_act, env.action_space, (num_episodes,))
            _, state, reward, done, _ = jax.vmap(env.step)(jax.random.split(k_env, num_episodes), state, action)
            return (state, alive & ~done, total + jnp.where(alive, reward, 0.0)), None

        init = (state, jnp.ones((num_episodes,), bool), jnp.zeros((num_episodes,), jnp.float32))
        (_, _, total), _ = jax.lax.scan(step, init, jax.random.split(k_run, env.max_steps))
        return total

    return np.asarray(run(key))


def random_transitions(env: Environment, key: jax.Array, num_envs: int, num_steps: int) -> dict[str, np.ndarray]:
    """Transitions of a uniformly random policy in ``env`` (with automatic resets), as flat arrays (``obs``,
    ``action``, ``next_obs``, ``reward``, ``terminated``)."""

    @jax.jit
    def run(key):
        k_reset, k_run = jax.random.split(key)
        obs, state = jax.vmap(env.reset)(jax.random.split(k_reset, num_envs))

        def step(carry, key):
            obs, state = carry
            k_act, k_env = jax.random.split(key)
            action = _random_action(k_act, env.action_space, (num_envs,))
            nxt, state, reward, _, info = jax.vmap(env.step)(jax.random.split(k_env, num_envs), state, action)
            row = dict(obs=obs, action=action, next_obs=info["final_obs"], reward=reward)
            return (nxt, state), {**row, "terminated": info["terminated"]}

        _, rows = jax.lax.scan(step, (obs, state), jax.random.split(k_run, num_steps))
        return rows

    rows = jax.device_get(run(key))
    return {k: np.asarray(v).reshape((-1, *v.shape[2:])) for k, v in rows.items()}


def as_transition(data: dict) -> Transition:
    """Flat transition arrays (demonstrations, ``random_transitions``) as a one-row ``Transition`` ``[1, N]``."""
    obs = jnp.asarray(data["obs"], jnp.float32)[None]
    n = obs.shape[1]
    action = jnp.asarray(data["action"])[None]
    z = jnp.zeros((1, n), jnp.float32)
    term = jnp.asarray(data.get("terminated", np.zeros(n, bool)), bool)[None]
    next_obs = jnp.asarray(data["next_obs"], jnp.float32)[None]
    return Transition(obs, action, action, z, z, z, term, jnp.zeros_like(term), term, next_obs, jnp.zeros_like(term))


def learned_rewards(model, state, data: dict, policy: PolicyFn) -> np.ndarray:
    """``model.learned_reward`` on flat transitions: ``[N]``."""
    return np.asarray(model.learned_reward(state, as_transition(data), policy))[0]


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; NaN when either side is constant (e.g. CartPole's reward along expert trajectories)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.std() < 1e-12 or y.std() < 1e-12:
        return math.nan
    return float(np.corrcoef(x, y)[0, 1])


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    from scipy import stats

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.std() < 1e-12 or y.std() < 1e-12:
        return math.nan
    return float(stats.spearmanr(x, y).statistic)


def normalized_score(returns, random_return: float, expert_return: float):
    """``(R - R_random) / (R_expert - R_random)``: 0 random, 1 expert (works for negative returns like Pendulum)."""
    return (np.asarray(returns, np.float64) - random_return) / (expert_return - random_return)


def steps_to_threshold(env_steps: np.ndarray, returns: np.ndarray, threshold: float) -> np.ndarray:
    """First evaluation's environment steps with ``return >= threshold``, per row of ``returns [..., E]``;
    ``inf`` where never reached."""
    returns = np.asarray(returns)
    env_steps = np.broadcast_to(np.asarray(env_steps, np.float64), returns.shape)
    hit = returns >= threshold
    first = np.argmax(hit, -1)
    steps = np.take_along_axis(env_steps, first[..., None], -1)[..., 0]
    return np.where(hit.any(-1), steps, np.inf)

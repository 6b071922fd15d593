"""Wrappers: time limits, fixed horizons (absorb after termination) and automatic resets.

Order (what ``stepjax.rl.envs.make`` builds): ``AutoReset(TimeLimit(FixedHorizon(raw)))``, ``FixedHorizon`` only on
request. Every wrapper is itself an ``Environment`` with the same two pure functions.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from stepjax.rl.envs.base import Environment


class Wrapper(Environment):
    """Forwards the spec of the wrapped environment."""

    def __init__(self, env: Environment):
        self.env = env
        self.name = env.name
        self.observation_size = env.observation_size
        self.action_space = env.action_space
        self.can_terminate = env.can_terminate
        self.max_steps = env.max_steps

    def default_params(self) -> Any:
        return self.env.default_params()

    @property
    def unwrapped(self) -> Environment:
        return self.env.unwrapped

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.env!r})"


@struct.dataclass
class TimeLimitState:
    inner: Any
    time: jax.Array  # steps taken in this episode


class TimeLimit(Wrapper):
    """Truncates episodes after ``max_steps`` steps: ``done = terminated | truncated``, ``info['truncated']``."""

    def __init__(self, env: Environment, max_steps: int | None = None):
        super().__init__(env)
        max_steps = env.max_steps if max_steps is None else max_steps
        if max_steps is None or max_steps < 1:
            raise ValueError(f"TimeLimit({env!r}): max_steps must be a positive int, got {max_steps!r}")
        self.max_steps = int(max_steps)

    def reset(self, key, params=None):
        obs, inner = self.env.reset(key, params)
        return obs, TimeLimitState(inner, jnp.zeros((), jnp.int32))

    def step(self, key, state, action, params=None):
        obs, inner, reward, terminated, info = self.env.step(key, state.inner, action, params)
        time = state.time + 1
        truncated = (time >= self.max_steps) & ~terminated
        info = {**info, "terminated": terminated, "truncated": truncated}
        return obs, TimeLimitState(inner, time), reward, terminated | truncated, info


@struct.dataclass
class AbsorbState:
    inner: Any
    absorbed: jax.Array  # the wrapped episode has terminated
    obs: jax.Array  # the last observation (the terminal one once absorbed)


class FixedHorizon(Wrapper):
    """Removes early termination: after the wrapped episode terminates, the environment stays in an absorbing state
    (the terminal observation repeats, every reward is 0) until the time limit.

    Why: a learned reward on a variable-horizon task leaks the horizon into the objective (a positive reward pays
    for surviving, a negative one for dying early), the termination bias behind "AIRL much worse than GAIL"
    (imitation #84/#279/#310). With a fixed horizon every episode has the same length, so adversarial and
    density-ratio rewards are compared on equal terms; the true return (the sum of the rewards passed through) is
    unchanged: absorbed steps give 0. ``info['absorbed']`` marks steps taken in the absorbing state.
    """

    def __init__(self, env: Environment):
        super().__init__(env)
        self.can_terminate = False

    def reset(self, key, params=None):
        obs, inner = self.env.reset(key, params)
        return obs, AbsorbState(inner, jnp.zeros((), bool), obs)

    def step(self, key, state, action, params=None):
        obs, inner, reward, terminated, info = self.env.step(key, state.inner, action, params)
        was = state.absorbed
        keep = lambda new, old: jnp.where(was, old, new)
        inner = jax.tree.map(keep, inner, state.inner)
        obs = keep(obs, state.obs)
        reward = jnp.where(was, 0.0, reward).astype(jnp.float32)
        absorbed = was | terminated
        info = {**info, "terminated": jnp.zeros((), bool), "absorbed": was}
        return obs, AbsorbState(inner, absorbed, obs), reward, jnp.zeros((), bool), info


class AutoReset(Wrapper):
    """Resets an environment when an episode ends: the returned observation is the next episode's first one and
    ``info['final_obs']`` the observation the ended episode reached (for value bootstrapping on truncation)."""

    def reset(self, key, params=None):
        return self.env.reset(key, params)

    def step(self, key, state, action, params=None):
        step_key, reset_key = jax.random.split(key)
        obs, new_state, reward, done, info = self.env.step(step_key, state, action, params)
        reset_obs, reset_state = self.env.reset(reset_key, params)
        pick = lambda a, b: jnp.where(done, a, b)
        state = jax.tree.map(pick, reset_state, new_state)
        return pick(reset_obs, obs), state, reward, done, {**info, "final_obs": obs}

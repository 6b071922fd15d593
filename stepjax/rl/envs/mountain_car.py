"""MountainCarContinuous-v0 (gymnasium 1.4 ``classic_control/continuous_mountain_car.py``): force in ``[-1, 1]``;
reward ``100`` on reaching ``position >= 0.45`` (terminal) minus ``0.1 a^2`` each step; time limit 999."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from stepjax.rl.envs.base import Box, Environment, raw_info


@struct.dataclass
class MountainCarParams:
    min_action: float = -1.0
    max_action: float = 1.0
    min_position: float = -1.2
    max_position: float = 0.6
    max_speed: float = 0.07
    goal_position: float = 0.45
    goal_velocity: float = 0.0
    power: float = 0.0015


@struct.dataclass
class MountainCarState:
    position: jax.Array
    velocity: jax.Array


class MountainCarContinuous(Environment):
    name = "MountainCarContinuous-v0"
    observation_size = 2
    action_space = Box(low=(-1.0,), high=(1.0,))
    can_terminate = True
    max_steps = 999

    def default_params(self) -> MountainCarParams:
        return MountainCarParams()

    @staticmethod
    def observation(state: MountainCarState) -> jax.Array:
        return jnp.stack([state.position, state.velocity]).astype(jnp.float32)

    def reset(self, key, params=None):
        state = MountainCarState(jax.random.uniform(key, (), jnp.float32, -0.6, -0.4), jnp.zeros((), jnp.float32))
        return self.observation(state), state

    def step(self, key, state, action, params=None):
        p = self.default_params() if params is None else params
        a = jnp.reshape(action, (-1,))[0]
        force = jnp.clip(a, p.min_action, p.max_action)
        velocity = state.velocity + force * p.power - 0.0025 * jnp.cos(3 * state.position)
        velocity = jnp.clip(velocity, -p.max_speed, p.max_speed)
        position = jnp.clip(state.position + velocity, p.min_position, p.max_position)
        velocity = jnp.where((position == p.min_position) & (velocity < 0), 0.0, velocity)
        terminated = (position >= p.goal_position) & (velocity >= p.goal_velocity)
        reward = jnp.where(terminated, 100.0, 0.0) - 0.1 * a**2  # gymnasium squares the unclipped action
        new = MountainCarState(position, velocity)
        return self.observation(new), new, reward.astype(jnp.float32), terminated, raw_info(terminated)

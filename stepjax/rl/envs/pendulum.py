"""Pendulum-v1 (gymnasium 1.4 ``classic_control/pendulum.py``): swing-up with torque in ``[-2, 2]``; reward
``-(angle_normalize(th)^2 + 0.1 thdot^2 + 0.001 u^2)``; never terminates; time limit 200."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from stepjax.rl.envs.base import Box, Environment, raw_info


@struct.dataclass
class PendulumParams:
    max_speed: float = 8.0
    max_torque: float = 2.0
    dt: float = 0.05
    g: float = 10.0
    m: float = 1.0
    l: float = 1.0  # noqa: E741 (gymnasium's name)


@struct.dataclass
class PendulumState:
    theta: jax.Array
    theta_dot: jax.Array


def angle_normalize(x: jax.Array) -> jax.Array:
    """Maps an angle to ``[-pi, pi)`` (gymnasium's formula)."""
    return ((x + jnp.pi) % (2 * jnp.pi)) - jnp.pi


class Pendulum(Environment):
    name = "Pendulum-v1"
    observation_size = 3
    action_space = Box(low=(-2.0,), high=(2.0,))
    can_terminate = False
    max_steps = 200

    def default_params(self) -> PendulumParams:
        return PendulumParams()

    @staticmethod
    def observation(state: PendulumState) -> jax.Array:
        return jnp.stack([jnp.cos(state.theta), jnp.sin(state.theta), state.theta_dot]).astype(jnp.float32)

    def reset(self, key, params=None):
        s = jax.random.uniform(key, (2,), jnp.float32, jnp.array([-jnp.pi, -1.0]), jnp.array([jnp.pi, 1.0]))
        state = PendulumState(s[0], s[1])
        return self.observation(state), state

    def step(self, key, state, action, params=None):
        p = self.default_params() if params is None else params
        u = jnp.clip(jnp.reshape(action, (-1,))[0], -p.max_torque, p.max_torque)
        th, thdot = state.theta, state.theta_dot
        cost = angle_normalize(th) ** 2 + 0.1 * thdot**2 + 0.001 * u**2
        new_thdot = thdot + (3 * p.g / (2 * p.l) * jnp.sin(th) + 3.0 / (p.m * p.l**2) * u) * p.dt
        new_thdot = jnp.clip(new_thdot, -p.max_speed, p.max_speed)
        new = PendulumState(th + new_thdot * p.dt, new_thdot)
        terminated = jnp.zeros((), bool)
        return self.observation(new), new, (-cost).astype(jnp.float32), terminated, raw_info(terminated)

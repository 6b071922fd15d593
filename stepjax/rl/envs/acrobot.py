"""Acrobot-v1 (gymnasium 1.4 ``classic_control/acrobot.py``, "book" dynamics): torques ``{-1, 0, +1}``, one RK4
step of ``dt = 0.2``; reward -1 per step and 0 on the terminal step (``-cos(t1) - cos(t1 + t2) > 1``); limit 500."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from stepjax.rl.envs.base import Discrete, Environment, raw_info


@struct.dataclass
class AcrobotParams:
    dt: float = 0.2
    link_length_1: float = 1.0
    link_mass_1: float = 1.0
    link_mass_2: float = 1.0
    link_com_pos_1: float = 0.5
    link_com_pos_2: float = 0.5
    link_moi: float = 1.0
    max_vel_1: float = 4 * jnp.pi
    max_vel_2: float = 9 * jnp.pi


@struct.dataclass
class AcrobotState:
    theta1: jax.Array
    theta2: jax.Array
    dtheta1: jax.Array
    dtheta2: jax.Array


TORQUES = (-1.0, 0.0, 1.0)


def _dsdt(s: jax.Array, torque: jax.Array, p: AcrobotParams) -> jax.Array:
    m1, m2, l1, lc1, lc2 = p.link_mass_1, p.link_mass_2, p.link_length_1, p.link_com_pos_1, p.link_com_pos_2
    i1 = i2 = p.link_moi
    g = 9.8
    theta1, theta2, dtheta1, dtheta2 = s[0], s[1], s[2], s[3]
    d1 = m1 * lc1**2 + m2 * (l1**2 + lc2**2 + 2 * l1 * lc2 * jnp.cos(theta2)) + i1 + i2
    d2 = m2 * (lc2**2 + l1 * lc2 * jnp.cos(theta2)) + i2
    phi2 = m2 * lc2 * g * jnp.cos(theta1 + theta2 - jnp.pi / 2.0)
    phi1 = (
        -m2 * l1 * lc2 * dtheta2**2 * jnp.sin(theta2)
        - 2 * m2 * l1 * lc2 * dtheta2 * dtheta1 * jnp.sin(theta2)
        + (m1 * lc1 + m2 * l1) * g * jnp.cos(theta1 - jnp.pi / 2)
        + phi2
    )
    ddtheta2 = (torque + d2 / d1 * phi1 - m2 * l1 * lc2 * dtheta1**2 * jnp.sin(theta2) - phi2) / (
        m2 * lc2**2 + i2 - d2**2 / d1
    )
    ddtheta1 = -(d2 * ddtheta2 + phi1) / d1
    return jnp.stack([dtheta1, dtheta2, ddtheta1, ddtheta2])


def _wrap(x: jax.Array, low: float, high: float) -> jax.Array:
    """gymnasium's ``wrap`` (shift by whole periods into ``[low, high]``) without its while loops."""
    diff = high - low
    return x - diff * jnp.ceil(jnp.maximum(x - high, 0.0) / diff) + diff * jnp.ceil(jnp.maximum(low - x, 0.0) / diff)


class Acrobot(Environment):
    name = "Acrobot-v1"
    observation_size = 6
    action_space = Discrete(3)
    can_terminate = True
    max_steps = 500

    def default_params(self) -> AcrobotParams:
        return AcrobotParams()

    @staticmethod
    def observation(state: AcrobotState) -> jax.Array:
        return jnp.stack(
            [
                jnp.cos(state.theta1),
                jnp.sin(state.theta1),
                jnp.cos(state.theta2),
                jnp.sin(state.theta2),
                state.dtheta1,
                state.dtheta2,
            ]
        ).astype(jnp.float32)

    def reset(self, key, params=None):
        s = jax.random.uniform(key, (4,), jnp.float32, -0.1, 0.1)
        state = AcrobotState(s[0], s[1], s[2], s[3])
        return self.observation(state), state

    def step(self, key, state, action, params=None):
        p = self.default_params() if params is None else params
        torque = jnp.asarray(TORQUES, jnp.float32)[action]
        s = jnp.stack([state.theta1, state.theta2, state.dtheta1, state.dtheta2])
        dt, half = p.dt, p.dt / 2.0
        k1 = _dsdt(s, torque, p)
        k2 = _dsdt(s + half * k1, torque, p)
        k3 = _dsdt(s + half * k2, torque, p)
        k4 = _dsdt(s + dt * k3, torque, p)
        ns = s + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
        new = AcrobotState(
            theta1=_wrap(ns[0], -jnp.pi, jnp.pi),
            theta2=_wrap(ns[1], -jnp.pi, jnp.pi),
            dtheta1=jnp.clip(ns[2], -p.max_vel_1, p.max_vel_1),
            dtheta2=jnp.clip(ns[3], -p.max_vel_2, p.max_vel_2),
        )
        terminated = -jnp.cos(new.theta1) - jnp.cos(new.theta2 + new.theta1) > 1.0
        reward = jnp.where(terminated, 0.0, -1.0).astype(jnp.float32)
        return self.observation(new), new, reward, terminated, raw_info(terminated)

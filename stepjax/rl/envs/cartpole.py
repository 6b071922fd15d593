"""CartPole-v1 (gymnasium 1.4 ``classic_control/cartpole.py``): Euler integration, reward 1 per step (the
terminating step included), termination when ``|x| > 2.4`` or ``|theta| > 12 deg``; time limit 500."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from stepjax.rl.envs.base import Discrete, Environment, raw_info


@struct.dataclass
class CartPoleParams:
    gravity: float = 9.8
    masscart: float = 1.0
    masspole: float = 0.1
    length: float = 0.5  # half the pole's length
    force_mag: float = 10.0
    tau: float = 0.02
    theta_threshold: float = 12 * 2 * 3.141592653589793 / 360
    x_threshold: float = 2.4


@struct.dataclass
class CartPoleState:
    x: jax.Array
    x_dot: jax.Array
    theta: jax.Array
    theta_dot: jax.Array


class CartPole(Environment):
    name = "CartPole-v1"
    observation_size = 4
    action_space = Discrete(2)
    can_terminate = True
    max_steps = 500

    def default_params(self) -> CartPoleParams:
        return CartPoleParams()

    @staticmethod
    def observation(state: CartPoleState) -> jax.Array:
        return jnp.stack([state.x, state.x_dot, state.theta, state.theta_dot]).astype(jnp.float32)

    def reset(self, key, params=None):
        s = jax.random.uniform(key, (4,), jnp.float32, -0.05, 0.05)
        state = CartPoleState(s[0], s[1], s[2], s[3])
        return self.observation(state), state

    def step(self, key, state, action, params=None):
        p = self.default_params() if params is None else params
        force = jnp.where(action == 1, p.force_mag, -p.force_mag)
        cos, sin = jnp.cos(state.theta), jnp.sin(state.theta)
        total_mass = p.masspole + p.masscart
        polemass_length = p.masspole * p.length
        temp = (force + polemass_length * state.theta_dot**2 * sin) / total_mass
        theta_acc = (p.gravity * sin - cos * temp) / (p.length * (4.0 / 3.0 - p.masspole * cos**2 / total_mass))
        x_acc = temp - polemass_length * theta_acc * cos / total_mass
        new = CartPoleState(
            x=state.x + p.tau * state.x_dot,
            x_dot=state.x_dot + p.tau * x_acc,
            theta=state.theta + p.tau * state.theta_dot,
            theta_dot=state.theta_dot + p.tau * theta_acc,
        )
        terminated = (jnp.abs(new.x) > p.x_threshold) | (jnp.abs(new.theta) > p.theta_threshold)
        return self.observation(new), new, jnp.ones((), jnp.float32), terminated, raw_info(terminated)

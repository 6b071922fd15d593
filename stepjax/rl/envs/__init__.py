"""Classic-control environments in JAX behind one functional interface (see ``base``): CartPole-v1, Pendulum-v1,
MountainCarContinuous-v0, Acrobot-v1, each matching gymnasium 1.4 step for step.

>>> env = make("CartPole-v1")                    # AutoReset(TimeLimit(CartPole))
>>> obs, state = env.reset(jax.random.key(0))
>>> obs, state, reward, done, info = env.step(jax.random.key(1), state, 1)
"""

from __future__ import annotations

from stepjax.rl.envs.acrobot import Acrobot
from stepjax.rl.envs.base import Box, Discrete, Environment
from stepjax.rl.envs.cartpole import CartPole
from stepjax.rl.envs.mountain_car import MountainCarContinuous
from stepjax.rl.envs.pendulum import Pendulum
from stepjax.rl.envs.wrappers import AutoReset, FixedHorizon, TimeLimit, Wrapper

ENVIRONMENTS: dict[str, type[Environment]] = {
    "CartPole-v1": CartPole,
    "Pendulum-v1": Pendulum,
    "MountainCarContinuous-v0": MountainCarContinuous,
    "Acrobot-v1": Acrobot,
}


def make(
    name: str, *, fixed_horizon: bool = False, auto_reset: bool = True, max_steps: int | None = None
) -> Environment:
    """Builds ``AutoReset(TimeLimit(FixedHorizon(env)))`` (``FixedHorizon`` only when asked, ``AutoReset`` unless
    ``auto_reset=False``). ``max_steps`` overrides the registered time limit."""
    if name not in ENVIRONMENTS:
        raise ValueError(f"unknown environment {name!r}; known: {sorted(ENVIRONMENTS)}")
    env: Environment = ENVIRONMENTS[name]()
    if fixed_horizon:
        env = FixedHorizon(env)
    env = TimeLimit(env, max_steps)
    return AutoReset(env) if auto_reset else env


__all__ = [
    "ENVIRONMENTS",
    "Acrobot",
    "AutoReset",
    "Box",
    "CartPole",
    "Discrete",
    "Environment",
    "FixedHorizon",
    "MountainCarContinuous",
    "Pendulum",
    "TimeLimit",
    "Wrapper",
    "make",
]

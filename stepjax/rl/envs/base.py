"""The functional environment interface (gymnax-style, written for jax >= 0.12 without gymnax).

An environment is a static object (hashable, closed over by ``jax.jit``) with two pure functions of arrays:

  ``reset(key, params) -> (obs, state)``
  ``step(key, state, action, params) -> (obs, state, reward, done, info)``

``state`` and ``params`` are pytrees (``flax.struct`` dataclasses), so both functions ``jax.vmap`` over environments
(keys, states, actions) and over parameters (e.g. domain randomisation). ``params=None`` means the defaults.
``info`` is a dict with a fixed structure per environment (so ``lax.scan`` can stack it): ``terminated`` (a terminal
state was reached), ``truncated`` (a time limit cut the episode) and whatever the wrappers add.

A raw environment never truncates and never resets by itself: ``TimeLimit``, ``FixedHorizon`` and ``AutoReset``
(in ``stepjax.rl.envs.wrappers``) add that. ``stepjax.rl.envs.make(name)`` builds the usual stack.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp


@dataclass(frozen=True)
class Discrete:
    """``n`` actions ``0 .. n-1`` (int32 scalars)."""

    n: int


@dataclass(frozen=True)
class Box:
    """Continuous actions of ``shape`` in ``[low, high]`` (float32; the environment clips)."""

    low: tuple[float, ...]
    high: tuple[float, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.low),)


ActionSpace = Discrete | Box


class Environment:
    """Base class: subclasses define ``reset``, ``step``, ``default_params``, ``observation_size``,
    ``action_space`` and ``can_terminate`` (True when episodes may end before the time limit)."""

    name: str = "environment"
    observation_size: int
    action_space: ActionSpace
    can_terminate: bool = True
    max_steps: int | None = None  # the registered time limit (wrappers use it; a raw env ignores it)

    def default_params(self) -> Any:
        raise NotImplementedError

    def reset(self, key: jax.Array, params: Any = None) -> tuple[jax.Array, Any]:
        raise NotImplementedError

    def step(
        self, key: jax.Array, state: Any, action: jax.Array, params: Any = None
    ) -> tuple[jax.Array, Any, jax.Array, jax.Array, dict[str, jax.Array]]:
        raise NotImplementedError

    @property
    def unwrapped(self) -> Environment:
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


def raw_info(terminated: jax.Array) -> dict[str, jax.Array]:
    """The info dict of a raw environment step."""
    return {"terminated": jnp.asarray(terminated, bool), "truncated": jnp.zeros((), bool)}

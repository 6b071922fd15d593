"""Policies for environment RL: MLP actor-critic (Flax NNX), categorical and diagonal-Gaussian action distributions.

Continuous policies act in normalised units: the Gaussian's samples live in ``[-1, 1]``-scaled space and
``to_env_action`` clips and rescales them into the environment's ``Box``. Log-probabilities are of the unclipped
sample (the usual PPO convention; the clip is part of the environment).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from stepjax.rl.envs.base import ActionSpace, Box, Discrete

ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu}


@struct.dataclass
class Categorical:
    """``logits [..., n]``."""

    logits: jax.Array

    def sample(self, key: jax.Array) -> jax.Array:
        return jax.random.categorical(key, self.logits)

    def log_prob(self, action: jax.Array) -> jax.Array:
        logp = jax.nn.log_softmax(self.logits)
        return jnp.take_along_axis(logp, action[..., None].astype(jnp.int32), -1)[..., 0]

    def entropy(self) -> jax.Array:
        logp = jax.nn.log_softmax(self.logits)
        return -jnp.sum(jnp.exp(logp) * logp, -1)

    def mode(self) -> jax.Array:
        return jnp.argmax(self.logits, -1)


@struct.dataclass
class DiagGaussian:
    """``mean [..., d]``, ``log_std [d]`` (state-independent)."""

    mean: jax.Array
    log_std: jax.Array

    def sample(self, key: jax.Array) -> jax.Array:
        return self.mean + jnp.exp(self.log_std) * jax.random.normal(key, self.mean.shape)

    def log_prob(self, action: jax.Array) -> jax.Array:
        z = (action - self.mean) * jnp.exp(-self.log_std)
        return jnp.sum(-0.5 * z**2 - self.log_std - 0.5 * jnp.log(2 * jnp.pi), -1)

    def entropy(self) -> jax.Array:
        per_dim = self.log_std + 0.5 * jnp.log(2 * jnp.pi * jnp.e)
        return jnp.broadcast_to(jnp.sum(per_dim, -1), self.mean.shape[:-1])

    def mode(self) -> jax.Array:
        return self.mean


Distribution = Categorical | DiagGaussian


class MLP(nnx.Module):
    """``x [..., in] -> [..., out]``: hidden layers with an activation, orthogonal init (gain sqrt 2, purejaxrl),
    the last layer's gain ``final_gain`` (0.01 for policy heads keeps the first policy near uniform)."""

    def __init__(
        self,
        in_size: int,
        hidden: Sequence[int],
        out_size: int,
        *,
        activation: str = "tanh",
        final_gain: float = 1.0,
        rngs: nnx.Rngs,
    ):
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; expected one of {sorted(ACTIVATIONS)}")
        sizes = [in_size, *hidden]
        init = lambda gain: nnx.initializers.orthogonal(gain)
        self.layers = nnx.List(
            [nnx.Linear(a, b, kernel_init=init(np.sqrt(2)), rngs=rngs) for a, b in itertools.pairwise(sizes)]
        )
        self.out = nnx.Linear(sizes[-1], out_size, kernel_init=init(final_gain), rngs=rngs)
        self.activation = activation

    def __call__(self, x: jax.Array) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        for layer in self.layers:
            x = act(layer(x))
        return self.out(x)


class ActorCritic(nnx.Module):
    """Separate actor and critic MLPs: ``obs [..., d] -> (distribution, value [...])``."""

    def __init__(
        self,
        obs_size: int,
        action_space: ActionSpace,
        hidden: Sequence[int] = (64, 64),
        *,
        activation: str = "tanh",
        rngs: nnx.Rngs,
    ):
        self.discrete = isinstance(action_space, Discrete)
        out = action_space.n if self.discrete else action_space.shape[0]
        self.actor = MLP(obs_size, hidden, out, activation=activation, final_gain=0.01, rngs=rngs)
        self.critic = MLP(obs_size, hidden, 1, activation=activation, final_gain=1.0, rngs=rngs)
        if not self.discrete:
            self.log_std = nnx.Param(jnp.zeros((out,), jnp.float32))

    def policy(self, obs: jax.Array) -> Distribution:
        out = self.actor(obs)
        return Categorical(out) if self.discrete else DiagGaussian(out, self.log_std[...])

    def value(self, obs: jax.Array) -> jax.Array:
        return self.critic(obs)[..., 0]

    def __call__(self, obs: jax.Array) -> tuple[Distribution, jax.Array]:
        return self.policy(obs), self.value(obs)


def to_env_action(action: jax.Array, space: ActionSpace) -> jax.Array:
    """Policy action -> environment action (Box: clip to ``[-1, 1]`` and rescale to ``[low, high]``)."""
    if isinstance(space, Discrete):
        return action
    low, high = jnp.asarray(space.low, jnp.float32), jnp.asarray(space.high, jnp.float32)
    return low + (jnp.clip(action, -1.0, 1.0) + 1.0) * 0.5 * (high - low)


def from_env_action(env_action: jax.Array, space: ActionSpace) -> jax.Array:
    """Environment action -> normalised policy units (the inverse of ``to_env_action`` inside the box)."""
    if isinstance(space, Discrete):
        return env_action
    low, high = jnp.asarray(space.low, jnp.float32), jnp.asarray(space.high, jnp.float32)
    return 2.0 * (env_action - low) / (high - low) - 1.0


def action_features(action: jax.Array, space: ActionSpace) -> jax.Array:
    """Actions as network inputs ``[..., k]``: one-hot for ``Discrete``, normalised values for ``Box``."""
    if isinstance(space, Discrete):
        return jax.nn.one_hot(action, space.n, dtype=jnp.float32)
    return jnp.asarray(action, jnp.float32)


def action_size(space: ActionSpace) -> int:
    return space.n if isinstance(space, Discrete) else space.shape[0]


__all__ = [
    "MLP",
    "ActorCritic",
    "Box",
    "Categorical",
    "DiagGaussian",
    "Discrete",
    "Distribution",
    "action_features",
    "action_size",
    "from_env_action",
    "to_env_action",
]

"""Behaviour cloning: the PPO actor trained by maximum likelihood on the expert's (state, action) pairs.

``make_bc_train(...) -> train(rng)`` mirrors ``env_ppo.make_train`` (pure, vmappable over seeds, the same network
and evaluation), so BC sits on the same plots; it uses no environment steps (only the evaluations do).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from stepjax.rl import env_ppo
from stepjax.rl.env_policies import from_env_action
from stepjax.rl.envs.base import Discrete, Environment
from stepjax.rl.envs.wrappers import AutoReset


@dataclasses.dataclass(frozen=True)
class BCConfig:
    steps: int = 2000
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    num_evals: int = 10


def make_bc_train(ppo_config: env_ppo.EnvPPOConfig, bc_config: BCConfig, env: Environment, demos: dict):
    """``train(rng) -> (params, metrics)``; metrics ``loss/bc [steps]``, ``eval/return [num_evals + 1]``,
    ``eval/grad_steps``, ``eval/env_steps`` (zeros: BC never acts in the environment while learning)."""
    graphdef = env_ppo.actor_critic(ppo_config, env)
    space = env.action_space
    obs = jnp.asarray(demos["obs"], jnp.float32)
    if isinstance(space, Discrete):
        actions = jnp.asarray(demos["action"], jnp.int32)
    else:
        actions = from_env_action(jnp.asarray(demos["action"], jnp.float32), space)
    n = obs.shape[0]
    per_eval = max(bc_config.steps // bc_config.num_evals, 1)
    tx = optax.adamw(bc_config.learning_rate, weight_decay=bc_config.weight_decay)
    eval_env = env.env if isinstance(env, AutoReset) else env
    batch = min(bc_config.batch_size, n)

    def loss_fn(params, idx):
        return -nnx.merge(graphdef, params).policy(obs[idx]).log_prob(actions[idx]).mean()

    def step(carry, key):
        params, opt = carry
        loss, grads = jax.value_and_grad(loss_fn)(params, jax.random.randint(key, (batch,), 0, n))
        updates, opt = tx.update(grads, opt, params)
        return (optax.apply_updates(params, updates), opt), loss

    def evaluate(params, key):
        return env_ppo.evaluate(
            graphdef, params, eval_env, key, ppo_config.eval_episodes, deterministic=ppo_config.deterministic_eval
        ).mean()

    def train(rng):
        k_init, k_steps, k_eval = jax.random.split(rng, 3)
        params = env_ppo.init_params(ppo_config, env, k_init)

        def chunk(carry, keys):
            carry, losses = jax.lax.scan(step, carry, jax.random.split(keys[0], per_eval))
            return carry, (losses, evaluate(carry[0], keys[1]))

        eval_keys = jax.random.split(k_eval, bc_config.num_evals + 1)
        first = evaluate(params, eval_keys[0])
        keys = jnp.stack([jax.random.split(k_steps, bc_config.num_evals), eval_keys[1:]], 1)
        (params, _), (losses, evals) = jax.lax.scan(chunk, (params, tx.init(params)), keys)
        metrics = {
            "loss/bc": losses.reshape(-1),
            "eval/return": jnp.concatenate([first[None], evals]),
            "eval/grad_steps": jnp.arange(bc_config.num_evals + 1) * per_eval,
            "eval/env_steps": jnp.zeros((bc_config.num_evals + 1,), jnp.int32),
        }
        return params, metrics

    return train

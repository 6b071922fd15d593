"""PPO for environments, purejaxrl style: ``make_train(config, env) -> train(rng)`` runs a whole experiment (rollouts,
GAE, epochs x minibatches, periodic evaluation) as one pure function, so ``jax.jit(jax.vmap(train))(keys)`` trains
many seeds in one program.

Pieces reused from the library: ``stepjax.rl.advantages.gae_env`` (GAE with dones and bootstrap) and
``stepjax.objectives.ppo`` (clipped surrogate with the entropy bonus, clipped value loss). Time-limit truncations
are bootstrapped: the reward of a truncated step gets ``gamma * V(final_obs)`` added and the episode is cut there.
Steps taken in an absorbing state (``FixedHorizon``, ``info['absorbed']``) train the critic but not the policy: the
action there has no effect, and on short-lived agents those steps are most of the batch (pure noise otherwise).

A ``RewardModel`` (inverse RL: PDEIL, GAIL, AIRL) replaces the environment's reward: after each rollout it is
updated on the rollout (``update``) and relabels it (``reward``); PPO then trains on the relabelled copy. The
environment's own reward is still summed into ``train/episode_return`` and the evaluations (the true return).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from stepjax.objectives.ppo import ppo_policy_loss, value_loss
from stepjax.rl.advantages import gae_env, whiten
from stepjax.rl.env_policies import ActorCritic, Distribution, to_env_action
from stepjax.rl.envs.base import Environment
from stepjax.rl.envs.wrappers import AutoReset, TimeLimit


@dataclasses.dataclass(frozen=True)
class EnvPPOConfig:
    """PPO settings (purejaxrl's names in lower case). ``total_timesteps`` is rounded down to whole evaluation
    chunks: ``num_evals * updates_per_eval`` updates of ``num_envs * num_steps`` environment steps."""

    num_envs: int = 4
    num_steps: int = 128
    total_timesteps: int = 500_000
    update_epochs: int = 4
    num_minibatches: int = 4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_eps: float = 0.2
    value_clip: float | None = 0.2  # None: unclipped value loss
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    learning_rate: float = 2.5e-4
    anneal_lr: bool = True
    normalize_advantages: bool = True
    hidden: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    reward_scale: float = 1.0  # environment rewards only
    normalize_learned_reward: bool = True  # standardise a RewardModel's rewards per rollout
    # With a RewardModel: a terminated step also earns gamma / (1 - gamma) times the learned reward of staying in its
    # terminal state forever (an absorbing state, as in DAC), so the learned objective does not depend on the
    # reward's offset and early termination is neither paid nor punished by it. False: terminal value 0.
    absorbing_bootstrap: bool = False
    num_evals: int = 10
    eval_episodes: int = 16
    deterministic_eval: bool = True

    @property
    def batch_size(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def num_updates(self) -> int:
        return max(self.total_timesteps // self.batch_size // self.num_evals, 1) * self.num_evals

    def validate(self) -> None:
        for key in ("num_envs", "num_steps", "total_timesteps", "update_epochs", "num_minibatches", "num_evals"):
            if getattr(self, key) < 1:
                raise ValueError(f"EnvPPOConfig.{key} must be >= 1, got {getattr(self, key)}")
        if self.batch_size % self.num_minibatches:
            raise ValueError(
                f"EnvPPOConfig.num_minibatches ({self.num_minibatches}) must divide num_envs * num_steps "
                f"({self.batch_size})"
            )


class Transition(NamedTuple):
    """One rollout step per environment; stacked by the rollout scan to ``[time, envs, ...]``."""

    obs: jax.Array
    action: jax.Array  # policy units (normalised for Box spaces)
    env_action: jax.Array  # what the environment received
    log_prob: jax.Array
    value: jax.Array
    reward: jax.Array  # the environment's (true) reward
    terminated: jax.Array
    truncated: jax.Array
    done: jax.Array
    next_obs: jax.Array  # the observation this step reached (before any automatic reset)
    absorbed: jax.Array  # taken in an absorbing state (``FixedHorizon``): the action changes nothing


PolicyFn = Callable[[jax.Array], Distribution]


class RewardModel(Protocol):
    """A learned reward trained alongside PPO (all three methods pure and jittable)."""

    def init(self, key: jax.Array) -> Any: ...

    def update(self, state: Any, traj: Transition, policy: PolicyFn, key: jax.Array) -> tuple[Any, dict]: ...

    def reward(self, state: Any, traj: Transition, policy: PolicyFn) -> jax.Array: ...


class Runner(NamedTuple):
    params: Any
    opt_state: Any
    env_state: Any
    obs: jax.Array
    episode_return: jax.Array  # true return so far of each environment's running episode
    reward_state: Any
    rng: jax.Array


def actor_critic(config: EnvPPOConfig, env: Environment) -> nnx.GraphDef:
    """The static structure of the policy network (parameters come from ``init_params``)."""
    return nnx.graphdef(_network(config, env, jax.random.key(0)))


def _network(config: EnvPPOConfig, env: Environment, key: jax.Array) -> ActorCritic:
    return ActorCritic(
        env.observation_size,
        env.action_space,
        config.hidden,
        activation=config.activation,
        rngs=nnx.Rngs(params=key),
    )


def init_params(config: EnvPPOConfig, env: Environment, key: jax.Array) -> nnx.State:
    return nnx.split(_network(config, env, key))[1]


def policy_fn(graphdef: nnx.GraphDef, params: nnx.State) -> PolicyFn:
    return lambda obs: nnx.merge(graphdef, params).policy(obs)


def evaluate(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    env: Environment,
    key: jax.Array,
    num_episodes: int,
    *,
    deterministic: bool = True,
) -> jax.Array:
    """True returns ``[num_episodes]`` of whole episodes (``env`` needs a time limit; automatic resets are
    ignored: each episode counts its rewards up to its first ``done``)."""
    if env.max_steps is None:
        raise ValueError(f"evaluate: {env!r} has no time limit")
    model = lambda: nnx.merge(graphdef, params)
    k_reset, k_run = jax.random.split(key)
    obs, state = jax.vmap(env.reset)(jax.random.split(k_reset, num_episodes))

    def step(carry, key):
        obs, state, alive, total = carry
        k_act, k_env = jax.random.split(key)
        dist = model().policy(obs)
        action = dist.mode() if deterministic else dist.sample(k_act)
        obs, state, reward, done, _ = jax.vmap(env.step)(
            jax.random.split(k_env, num_episodes), state, to_env_action(action, env.action_space)
        )
        total = total + jnp.where(alive, reward, 0.0)
        return (obs, state, alive & ~done, total), None

    init = (obs, state, jnp.ones((num_episodes,), bool), jnp.zeros((num_episodes,), jnp.float32))
    (_, _, _, total), _ = jax.lax.scan(step, init, jax.random.split(k_run, env.max_steps))
    return total


def learner_rewards(
    config: EnvPPOConfig,
    rewards: jax.Array,
    traj: Transition,
    next_value: jax.Array,
    absorbing: jax.Array | None = None,
    *,
    learned: bool = False,
) -> jax.Array:
    """The per-step rewards GAE sees, ``[time, envs]``.

    Learned rewards are standardised over the rollout (``normalize_learned_reward``); with ``absorbing`` (the learned
    reward of staying in each step's terminal state, transformed alike) a terminated step adds the absorbing tail
    ``gamma / (1 - gamma) * absorbing``. Every truncated step adds ``gamma * V(final_obs)`` (``next_value``).
    """
    if learned and config.normalize_learned_reward:
        shift, scale = rewards.mean(), rewards.std() + 1e-8
        rewards = (rewards - shift) / scale
        absorbing = None if absorbing is None else (absorbing - shift) / scale
    if absorbing is not None:
        rewards = rewards + traj.terminated * (config.gamma / (1.0 - config.gamma)) * absorbing
    return rewards + config.gamma * traj.truncated * next_value


def make_train(
    config: EnvPPOConfig,
    env: Environment,
    *,
    reward_model: RewardModel | None = None,
    eval_env: Environment | None = None,
) -> Callable[[jax.Array], tuple[Runner, dict[str, jax.Array]]]:
    """Builds ``train(rng) -> (runner, metrics)``.

    Args:
      env: the training environment with automatic resets (``stepjax.rl.envs.make``).
      reward_model: a learned reward replacing the environment's (None: PPO on the true reward).
      eval_env: the environment for evaluations (default: ``env`` without its ``AutoReset``).
    Returns:
      ``train``: pure in ``rng``. Metrics: per update ``[num_updates]`` (``env_steps``, ``train/episode_return``
      (mean true return of the episodes finished in the rollout; NaN when none did), ``loss/*``, ``reward/*``), and
      per evaluation ``[num_evals + 1]`` (``eval/env_steps``, ``eval/return``: mean true return of
      ``eval_episodes`` episodes, the first one before any training).
    """
    config.validate()
    graphdef = actor_critic(config, env)
    space = env.action_space
    eval_env = eval_env or (env.env if isinstance(env, AutoReset) else env)
    if _find(eval_env, TimeLimit) is None:
        raise ValueError(f"make_train: the evaluation environment {eval_env!r} needs a TimeLimit")
    n_updates = config.num_updates
    per_eval = n_updates // config.num_evals
    mb_size = config.batch_size // config.num_minibatches
    total_grad_steps = n_updates * config.update_epochs * config.num_minibatches
    lr = (
        optax.linear_schedule(config.learning_rate, 0.0, total_grad_steps) if config.anneal_lr else config.learning_rate
    )
    tx = optax.chain(optax.clip_by_global_norm(config.max_grad_norm), optax.adam(lr, eps=1e-5))
    model = lambda params: nnx.merge(graphdef, params)

    def rollout(runner: Runner) -> tuple[Runner, Transition, jax.Array]:
        def step(carry, key):
            env_state, obs, ep_ret = carry
            k_act, k_env = jax.random.split(key)
            dist, value = model(runner.params)(obs)
            action = dist.sample(k_act)
            env_action = to_env_action(action, space)
            next_obs, env_state, reward, done, info = jax.vmap(env.step)(
                jax.random.split(k_env, config.num_envs), env_state, env_action
            )
            ep_ret = ep_ret + reward
            finished = jnp.where(done, ep_ret, 0.0)
            tr = Transition(
                obs,
                action,
                env_action,
                dist.log_prob(action),
                value,
                reward,
                info["terminated"],
                info["truncated"],
                done,
                info["final_obs"],
                info.get("absorbed", jnp.zeros_like(done)),
            )
            return (env_state, next_obs, jnp.where(done, 0.0, ep_ret)), (tr, finished)

        rng, key = jax.random.split(runner.rng)
        carry = (runner.env_state, runner.obs, runner.episode_return)
        (env_state, obs, ep_ret), (traj, finished) = jax.lax.scan(step, carry, jax.random.split(key, config.num_steps))
        return runner._replace(env_state=env_state, obs=obs, episode_return=ep_ret, rng=rng), traj, finished

    def loss_fn(params, mb):
        dist, value = model(params)(mb["obs"])
        log_prob, entropy = dist.log_prob(mb["action"]), dist.entropy()
        row = lambda x: x.reshape(1, -1)
        ones = jnp.ones((1, mb_size), jnp.float32)
        # Actions taken in absorbing states change nothing: they carry no policy gradient (only value targets).
        acting = row(1.0 - mb["absorbed"].astype(jnp.float32))
        adv = whiten(row(mb["advantages"]), acting) if config.normalize_advantages else row(mb["advantages"])
        pol = ppo_policy_loss(
            row(log_prob),
            row(mb["log_prob"]),
            adv,
            acting,
            clip_eps=config.clip_eps,
            entropy=row(entropy),
            entropy_coef=config.ent_coef,
        )
        val = value_loss(row(value), row(mb["value"]), row(mb["returns"]), ones, value_clip=config.value_clip)
        loss = pol["ppo"].value + config.vf_coef * val["value"].value
        metrics = {
            "loss/policy": pol["loss/policy_avg"].value,
            "loss/value": val["value"].value,
            "loss/entropy": pol["policy/entropy_avg"].value,
            "loss/clipfrac": pol["policy/clipfrac_avg"].value,
            "loss/approxkl": pol["policy/approxkl_avg"].value,
        }
        return loss, metrics

    def update(runner: Runner, _):
        runner, traj, finished = rollout(runner)
        rng, k_reward, k_perm = jax.random.split(runner.rng, 3)
        metrics = {}
        absorbing = None
        if reward_model is None:
            rewards = traj.reward * config.reward_scale
            reward_state = runner.reward_state
        else:
            policy = policy_fn(graphdef, runner.params)
            reward_state, metrics = reward_model.update(runner.reward_state, traj, policy, k_reward)
            rewards = reward_model.reward(reward_state, traj, policy)  # a relabelled copy; traj keeps true rewards
            metrics = {**metrics, "reward/learned_mean": rewards.mean(), "reward/learned_std": rewards.std()}
            if config.absorbing_bootstrap:
                # The terminal state repeated forever: same state and action, never terminating again.
                stay = traj._replace(obs=traj.next_obs, terminated=jnp.zeros_like(traj.terminated))
                absorbing = reward_model.reward(reward_state, stay, policy)
        next_value = model(runner.params).value(traj.next_obs)
        rewards = learner_rewards(config, rewards, traj, next_value, absorbing, learned=reward_model is not None)
        last_value = model(runner.params).value(runner.obs)
        advantages, returns = gae_env(
            rewards, traj.value, traj.done, last_value, gamma=config.gamma, lam=config.gae_lambda
        )
        flat = {
            "obs": traj.obs,
            "action": traj.action,
            "log_prob": traj.log_prob,
            "value": traj.value,
            "advantages": advantages,
            "returns": returns,
            "absorbed": traj.absorbed,
        }
        flat = jax.tree.map(lambda x: x.reshape((config.batch_size, *x.shape[2:])), flat)

        def epoch(carry, key):
            def minibatch(carry, mb):
                params, opt_state = carry
                (_, mb_metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, mb)
                updates, opt_state = tx.update(grads, opt_state, params)
                return (optax.apply_updates(params, updates), opt_state), mb_metrics

            perm = jax.random.permutation(key, config.batch_size)
            batches = jax.tree.map(lambda x: x[perm].reshape((config.num_minibatches, mb_size, *x.shape[1:])), flat)
            return jax.lax.scan(minibatch, carry, batches)

        (params, opt_state), loss_metrics = jax.lax.scan(
            epoch, (runner.params, runner.opt_state), jax.random.split(k_perm, config.update_epochs)
        )
        n_done = traj.done.sum()
        metrics = {
            **metrics,
            **jax.tree.map(jnp.mean, loss_metrics),
            "train/episode_return": jnp.where(n_done > 0, finished.sum() / jnp.maximum(n_done, 1), jnp.nan),
            "train/episodes": n_done,
            "reward/env_mean": traj.reward.mean(),
        }
        runner = runner._replace(params=params, opt_state=opt_state, reward_state=reward_state, rng=rng)
        return runner, metrics

    def run_eval(params, key):
        returns = evaluate(
            graphdef, params, eval_env, key, config.eval_episodes, deterministic=config.deterministic_eval
        )
        return returns.mean()

    def train(rng: jax.Array) -> tuple[Runner, dict[str, jax.Array]]:
        k_init, k_reset, k_reward, k_eval, rng = jax.random.split(rng, 5)
        params = init_params(config, env, k_init)
        obs, env_state = jax.vmap(env.reset)(jax.random.split(k_reset, config.num_envs))
        reward_state = reward_model.init(k_reward) if reward_model is not None else jnp.zeros(())
        runner = Runner(
            params, tx.init(params), env_state, obs, jnp.zeros((config.num_envs,), jnp.float32), reward_state, rng
        )

        def chunk(runner, key):
            runner, metrics = jax.lax.scan(update, runner, None, per_eval)
            return runner, (metrics, run_eval(runner.params, key))

        eval_keys = jax.random.split(k_eval, config.num_evals + 1)
        first = run_eval(params, eval_keys[0])
        runner, (metrics, evals) = jax.lax.scan(chunk, runner, eval_keys[1:])
        metrics = jax.tree.map(lambda x: x.reshape((n_updates, *x.shape[2:])), metrics)
        steps = (jnp.arange(n_updates) + 1) * config.batch_size
        metrics["env_steps"] = steps
        metrics["eval/return"] = jnp.concatenate([first[None], evals])
        metrics["eval/env_steps"] = jnp.arange(config.num_evals + 1) * per_eval * config.batch_size
        return runner, metrics

    return train


def _find(env: Environment, kind: type) -> Environment | None:
    while True:
        if isinstance(env, kind):
            return env
        if not hasattr(env, "env"):
            return None
        env = env.env

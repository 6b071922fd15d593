"""Adversarial imitation baselines as ``env_ppo.RewardModel``s: GAIL and AIRL (imitation's conventions).

Both train a discriminator logit ``D`` (expert high) by binary cross-entropy on equal-sized expert and agent
minibatches, ``disc_updates`` steps after each rollout, then relabel the rollout:
- GAIL: ``D = MLP(s, a)``, policy reward ``-log(1 - sigmoid(D)) = softplus(D)``.
- AIRL: ``D = f(s, a, s', done) - log pi(a | s)`` with ``f = g(s[, a]) + gamma (1 - done) h(s') - h(s)`` (reward ``g``,
  potential shaping ``h``); policy reward ``D`` itself (``f`` minus the policy's log-prob, an entropy-regularised
  reward). ``g`` is the recovered reward (``learned_reward``/``eval_reward``).
Actions enter networks one-hot (discrete) or in normalised units (continuous).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from stepjax.rl.env_policies import MLP, action_features, action_size, from_env_action
from stepjax.rl.env_ppo import PolicyFn, Transition
from stepjax.rl.envs.base import Discrete, Environment


@dataclasses.dataclass(frozen=True)
class AdversarialConfig:
    hidden: tuple[int, ...] = (64, 64)
    learning_rate: float = 3e-4
    disc_updates: int = 4  # discriminator steps per rollout
    batch_size: int = 256  # expert and agent transitions per discriminator step (each)
    state_only: bool = False  # AIRL: g(s) instead of g(s, a)
    allow_variable_horizon: bool = False


@struct.dataclass
class DiscriminatorState:
    params: object
    opt_state: object


class _Adversarial:
    """Shared discriminator training; subclasses define the networks and ``logit``."""

    name = "adversarial"

    def __init__(self, config: AdversarialConfig, demos: dict, env: Environment, gamma: float):
        self.config = config
        self.space = env.action_space
        self.obs_size = env.observation_size
        self.gamma = gamma
        self.expert = {
            "obs": jnp.asarray(demos["obs"], jnp.float32),
            "next_obs": jnp.asarray(demos["next_obs"], jnp.float32),
            "terminated": jnp.asarray(demos["terminated"], jnp.float32),
            "env_action": jnp.asarray(demos["action"], jnp.int32 if self._discrete else jnp.float32),
        }
        self.tx = optax.adam(config.learning_rate)
        self.graphdef = nnx.graphdef(self._network(jax.random.key(0)))

    @property
    def _discrete(self) -> bool:
        return isinstance(self.space, Discrete)

    def _network(self, key: jax.Array) -> nnx.Module:
        raise NotImplementedError

    def _features(self, obs, env_action):
        act = env_action if self._discrete else from_env_action(env_action, self.space)
        return jnp.concatenate([obs, action_features(act, self.space)], -1)

    def _policy_action(self, env_action):
        """The policy-units action whose log-prob AIRL needs for a stored environment action."""
        return env_action if self._discrete else from_env_action(env_action, self.space)

    def logit(self, params, batch: dict, policy: PolicyFn) -> jax.Array:
        raise NotImplementedError

    def init(self, key: jax.Array) -> DiscriminatorState:
        params = nnx.split(self._network(key))[1]
        return DiscriminatorState(params, self.tx.init(params))

    def update(self, state: DiscriminatorState, traj: Transition, policy: PolicyFn, key: jax.Array):
        agent = jax.tree.map(lambda x: x.reshape((-1, *x.shape[2:])), self._traj_batch(traj))
        n_agent, n_expert = agent["obs"].shape[0], self.expert["obs"].shape[0]
        b = self.config.batch_size

        def loss_fn(params, exp_batch, agent_batch):
            le = self.logit(params, exp_batch, policy)
            la = self.logit(params, agent_batch, policy)
            loss = 0.5 * (optax.sigmoid_binary_cross_entropy(le, 1.0).mean())
            loss = loss + 0.5 * optax.sigmoid_binary_cross_entropy(la, 0.0).mean()
            acc = 0.5 * ((le > 0).mean() + (la < 0).mean())
            return loss, acc

        def step(carry, key):
            params, opt = carry
            k_e, k_a = jax.random.split(key)
            exp_batch = jax.tree.map(lambda x: x[jax.random.randint(k_e, (b,), 0, n_expert)], self.expert)
            agent_batch = jax.tree.map(lambda x: x[jax.random.randint(k_a, (b,), 0, n_agent)], agent)
            (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, exp_batch, agent_batch)
            updates, opt = self.tx.update(grads, opt, params)
            return (optax.apply_updates(params, updates), opt), (loss, acc)

        (params, opt), (loss, acc) = jax.lax.scan(
            step, (state.params, state.opt_state), jax.random.split(key, self.config.disc_updates)
        )
        metrics = {f"{self.name}/disc_loss": loss.mean(), f"{self.name}/disc_accuracy": acc.mean()}
        return DiscriminatorState(params, opt), metrics

    def _traj_batch(self, traj: Transition) -> dict:
        return {
            "obs": traj.obs,
            "next_obs": traj.next_obs,
            "terminated": traj.terminated.astype(jnp.float32),
            "env_action": traj.env_action,
        }


class GAILReward(_Adversarial):
    name = "gail"

    def _network(self, key):
        return MLP(self.obs_size + action_size(self.space), self.config.hidden, 1, rngs=nnx.Rngs(params=key))

    def logit(self, params, batch, policy):
        return nnx.merge(self.graphdef, params)(self._features(batch["obs"], batch["env_action"]))[..., 0]

    def reward(self, state, traj, policy):
        return jax.nn.softplus(self.logit(state.params, self._traj_batch(traj), policy))

    def learned_reward(self, state, traj, policy):
        return self.reward(state, traj, policy)


class AIRLNets(nnx.Module):
    def __init__(self, reward_in: int, obs_size: int, hidden, *, rngs: nnx.Rngs):
        self.g = MLP(reward_in, hidden, 1, rngs=rngs)
        self.h = MLP(obs_size, hidden, 1, rngs=rngs)


class AIRLReward(_Adversarial):
    name = "airl"

    def _network(self, key):
        reward_in = self.obs_size + (0 if self.config.state_only else action_size(self.space))
        return AIRLNets(reward_in, self.obs_size, self.config.hidden, rngs=nnx.Rngs(params=key))

    def _g(self, nets, batch):
        x = batch["obs"] if self.config.state_only else self._features(batch["obs"], batch["env_action"])
        return nets.g(x)[..., 0]

    def shaped(self, params, batch):
        """``f(s, a, s', done) = g + gamma (1 - done) h(s') - h(s)``."""
        nets = nnx.merge(self.graphdef, params)
        h, h_next = nets.h(batch["obs"])[..., 0], nets.h(batch["next_obs"])[..., 0]
        return self._g(nets, batch) + self.gamma * (1.0 - batch["terminated"]) * h_next - h

    def logit(self, params, batch, policy):
        # Expert and agent alike: the log-prob of the executed (clipped, normalised) action.
        log_pi = jax.lax.stop_gradient(policy(batch["obs"]).log_prob(self._policy_action(batch["env_action"])))
        return self.shaped(params, batch) - log_pi

    def reward(self, state, traj, policy):
        return self.logit(state.params, self._traj_batch(traj), policy)

    def learned_reward(self, state, traj, policy):
        """The recovered reward ``g`` (no shaping, no entropy term)."""
        return self._g(nnx.merge(self.graphdef, state.params), self._traj_batch(traj))

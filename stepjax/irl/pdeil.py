"""PDEIL (arXiv 2112.06746): imitation through a density-estimation reward

    r(s, a) = rho_E(s, a) / (alpha rho_E(s) + (1 - alpha) rho_pi(s)),

computed in log space: ``log r = log rho_E(s, a) - logaddexp(log alpha + log rho_E(s), log(1-alpha) + log rho_pi(s))``.
With ``alpha = 1`` the reward is ``pi_E(a | s)`` (its greedy policy is the expert's); ``alpha < 1`` lowers the
reward where the agent visits states more than the expert does.

Densities (``stepjax.irl.densities``): the expert's joint ``rho_E(s, a)`` (continuous actions, in normalised action
units) with ``rho_E(s)`` its marginal, or, for discrete actions, ``rho_E(s)`` times a classifier's ``pi_E(a | s)``
(``stepjax.irl.classifier``). ``rho_pi(s)`` is refitted on every rollout's states (DI-engine clears its buffer every
iteration). The watch-try-learn loop is ``env_ppo.make_train`` with this reward model: collect a rollout, refit the
agent density (``update``), relabel a copy of the rollout (``reward``), PPO update — all inside one jit.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import struct

from stepjax.irl import densities as dens
from stepjax.irl.classifier import action_log_prob, classifier_graphdef, fit_classifier
from stepjax.rl.env_policies import from_env_action
from stepjax.rl.env_ppo import PolicyFn, Transition
from stepjax.rl.envs.base import Discrete, Environment

REWARD_FORMS = ("ratio", "log")


@dataclasses.dataclass(frozen=True)
class PDEILConfig:
    alpha: float = 0.5
    density: str = "gaussian"  # expert density: gaussian | kde | gmm
    agent_density: str = "gaussian"  # rho_pi(s)
    shrinkage: float | None = None  # None: Ledoit-Wolf
    reg: float = 1e-4  # covariance ridge relative to the mean variance
    kde_bandwidth: float = 1.0  # times Scott's factor
    kde_max_points: int = 2048  # random subset of the data kept as kernel centres
    gmm_components: int = 8
    gmm_iterations: int = 30
    reward: str = "ratio"  # ratio: r (the paper); log: log r
    log_ratio_min: float = -10.0  # log r is clipped to [min, max] before either form
    log_ratio_max: float = 5.0
    classifier_hidden: tuple[int, ...] = (64, 64)
    classifier_steps: int = 1000
    classifier_label_smoothing: float = 0.01
    allow_variable_horizon: bool = False

    def validate(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"PDEILConfig.alpha must be in [0, 1], got {self.alpha}")
        for key in ("density", "agent_density"):
            if getattr(self, key) not in dens.DENSITIES:
                raise ValueError(f"PDEILConfig.{key} is {getattr(self, key)!r}; expected one of {dens.DENSITIES}")
        if self.reward not in REWARD_FORMS:
            raise ValueError(f"PDEILConfig.reward is {self.reward!r}; expected one of {REWARD_FORMS}")
        if not self.log_ratio_min < self.log_ratio_max:
            raise ValueError("PDEILConfig.log_ratio_min must be < log_ratio_max")


def pdeil_log_ratio(
    log_expert_joint: jax.Array, log_expert_state: jax.Array, log_agent_state: jax.Array, alpha: float
) -> jax.Array:
    """``log r`` from the three log-densities (any matching shapes). ``alpha`` may be 0 or 1 (a log term of
    ``-inf`` drops out of the ``logaddexp``); a non-finite result (both densities ``-inf``) becomes ``-inf``."""
    log_a = math.log(alpha) if alpha > 0 else -jnp.inf
    log_1ma = math.log1p(-alpha) if alpha < 1 else -jnp.inf
    denominator = jnp.logaddexp(log_a + log_expert_state, log_1ma + log_agent_state)
    log_r = log_expert_joint - denominator
    return jnp.where(jnp.isnan(log_r), -jnp.inf, log_r)


def shape_reward(log_r: jax.Array, form: str, low: float, high: float) -> jax.Array:
    """Clips ``log r`` to ``[low, high]`` and returns ``exp`` of it (``ratio``) or it (``log``); always finite."""
    clipped = jnp.clip(jnp.nan_to_num(log_r, nan=low, neginf=low, posinf=high), low, high)
    return jnp.exp(clipped) if form == "ratio" else clipped


@struct.dataclass
class PDEILState:
    expert_joint: dens.Mixture  # rho_E(s, a) (continuous) or a placeholder (discrete)
    expert_state: dens.Mixture  # rho_E(s)
    classifier: object  # pi_E(a | s) parameters (discrete) or an empty array
    agent_state: dens.Mixture  # rho_pi(s), refitted each rollout


class PDEILReward:
    """PDEIL as an ``env_ppo.RewardModel``.

    Args:
      demos: ``stepjax.irl.demos`` arrays (``obs``, ``action`` as the environment received it).
      env: the training environment (for its action space; the horizon guard runs in ``make_irl_train``).
      rollout_size: states per rollout (``num_envs * num_steps``): the agent density is fitted on them.
    """

    def __init__(self, config: PDEILConfig, demos: dict, env: Environment, rollout_size: int):
        config.validate()
        self.config = config
        self.space = env.action_space
        self.discrete = isinstance(self.space, Discrete)
        self.obs_size = env.observation_size
        self.rollout_size = rollout_size
        self.expert_obs = jnp.asarray(demos["obs"], jnp.float32)
        if self.discrete:
            self.expert_action = jnp.asarray(demos["action"], jnp.int32)
            self.classifier_graphdef = classifier_graphdef(self.obs_size, self.space.n, config.classifier_hidden)
        else:
            self.expert_action = from_env_action(jnp.asarray(demos["action"], jnp.float32), self.space)

    def _fit(self, kind: str, x: jax.Array, key: jax.Array) -> dens.Mixture:
        c = self.config
        k_sub, k_fit = jax.random.split(key)
        if kind == "kde" and x.shape[0] > c.kde_max_points:
            x = x[jax.random.choice(k_sub, x.shape[0], (c.kde_max_points,), replace=False)]
        return dens.fit_density(
            kind,
            x,
            k_fit,
            shrinkage=c.shrinkage,
            reg=c.reg,
            bandwidth=c.kde_bandwidth,
            components=c.gmm_components,
            iterations=c.gmm_iterations,
        )

    def init(self, key: jax.Array) -> PDEILState:
        c = self.config
        k_joint, k_cls, k_agent = jax.random.split(key, 3)
        if self.discrete:
            expert_state = self._fit(c.density, self.expert_obs, k_joint)
            joint = expert_state
            _, classifier = fit_classifier(
                self.expert_obs,
                self.expert_action,
                self.space.n,
                k_cls,
                hidden=c.classifier_hidden,
                steps=c.classifier_steps,
                label_smoothing=c.classifier_label_smoothing,
            )
        else:
            joint = self._fit(c.density, jnp.concatenate([self.expert_obs, self.expert_action], -1), k_joint)
            expert_state = dens.marginal(joint, range(self.obs_size))
            classifier = jnp.zeros(())
        # Same shapes as the per-rollout refit (a scan carry), fitted on expert states until the first rollout.
        placeholder = self.expert_obs[jnp.arange(self.rollout_size) % self.expert_obs.shape[0]]
        agent = self._fit(c.agent_density, placeholder, k_agent)
        return PDEILState(joint, expert_state, classifier, agent)

    def update(self, state: PDEILState, traj: Transition, policy: PolicyFn, key: jax.Array):
        obs = traj.obs.reshape(-1, self.obs_size)
        agent = self._fit(self.config.agent_density, obs, key)
        state = state.replace(agent_state=agent)
        return state, {
            "pdeil/log_rho_agent": dens.log_prob(agent, obs).mean(),
            "pdeil/log_rho_expert": dens.log_prob(state.expert_state, obs).mean(),
        }

    def log_ratio(self, state: PDEILState, obs: jax.Array, env_action: jax.Array) -> jax.Array:
        """``log r(s, a)`` for ``obs [..., d]`` and environment actions ``[...]`` / ``[..., k]``."""
        log_state = dens.log_prob(state.expert_state, obs)
        if self.discrete:
            log_joint = log_state + action_log_prob(self.classifier_graphdef, state.classifier, obs, env_action)
        else:
            sa = jnp.concatenate([obs, from_env_action(env_action, self.space)], -1)
            log_joint = dens.log_prob(state.expert_joint, sa)
        log_agent = dens.log_prob(state.agent_state, obs)
        return pdeil_log_ratio(log_joint, log_state, log_agent, self.config.alpha)

    def learned_reward(self, state: PDEILState, traj: Transition, policy: PolicyFn) -> jax.Array:
        c = self.config
        log_r = self.log_ratio(state, traj.obs, traj.env_action)
        return shape_reward(log_r, c.reward, c.log_ratio_min, c.log_ratio_max)

    reward = learned_reward

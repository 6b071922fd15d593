"""One entry point for the environment imitation learners: ``make_irl_train(algorithm, ...) -> train(rng)``.

``pdeil``, ``gail`` and ``airl`` are PPO (``stepjax.rl.env_ppo``) with a learned reward model; each refuses a
variable-horizon environment unless allowed (``stepjax.irl.horizon``). ``bc`` is ``stepjax.irl.bc``.
"""

from __future__ import annotations

from stepjax.irl.adversarial import AdversarialConfig, AIRLReward, GAILReward
from stepjax.irl.bc import BCConfig, make_bc_train
from stepjax.irl.horizon import check_fixed_horizon
from stepjax.irl.pdeil import PDEILConfig, PDEILReward
from stepjax.rl import env_ppo
from stepjax.rl.envs.base import Environment

ALGORITHMS = ("pdeil", "gail", "airl", "bc")


def make_reward_model(
    algorithm: str,
    irl_config: PDEILConfig | AdversarialConfig,
    ppo_config: env_ppo.EnvPPOConfig,
    env: Environment,
    demos: dict,
):
    """The learned reward of ``algorithm`` (``pdeil``, ``gail``, ``airl``), after the horizon check."""
    allowed = irl_config.allow_variable_horizon or ppo_config.absorbing_bootstrap  # absorbing: horizon-free objective
    check_fixed_horizon(env, allow_variable_horizon=allowed, algorithm=algorithm)
    if algorithm == "pdeil":
        return PDEILReward(irl_config, demos, env, ppo_config.batch_size)
    if algorithm == "gail":
        return GAILReward(irl_config, demos, env, ppo_config.gamma)
    if algorithm == "airl":
        return AIRLReward(irl_config, demos, env, ppo_config.gamma)
    raise ValueError(f"unknown reward-learning algorithm {algorithm!r}; expected pdeil, gail or airl")


def make_irl_train(
    algorithm: str,
    ppo_config: env_ppo.EnvPPOConfig,
    irl_config: PDEILConfig | AdversarialConfig | BCConfig,
    env: Environment,
    demos: dict,
    *,
    eval_env: Environment | None = None,
):
    """``train(rng) -> (runner_or_params, metrics)`` for ``algorithm`` in ``ALGORITHMS``; also returns the reward
    model (None for BC) so callers can score states with the trained reward: ``(train, reward_model)``."""
    if algorithm == "bc":
        return make_bc_train(ppo_config, irl_config, env, demos), None
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; expected one of {ALGORITHMS}")
    model = make_reward_model(algorithm, irl_config, ppo_config, env, demos)
    return env_ppo.make_train(ppo_config, env, reward_model=model, eval_env=eval_env), model

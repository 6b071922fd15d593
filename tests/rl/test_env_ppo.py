"""PPO for environments: reward bookkeeping (truncation bootstrap, absorbing tail, standardisation), vmap over seeds
equals separate runs, config errors, and PPO learning CartPole."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stepjax.rl import envs
from stepjax.rl.env_ppo import EnvPPOConfig, Transition, learner_rewards, make_train


def _traj(terminated, truncated):
    z = jnp.zeros(terminated.shape)
    return Transition(z, z, z, z, z, z, terminated, truncated, terminated | truncated, z, jnp.zeros_like(terminated))


def test_learner_rewards_bootstrap_truncations_and_absorbing_terminals():
    config = EnvPPOConfig(gamma=0.9)
    terminated = jnp.array([[False, False], [True, False], [False, False]])
    truncated = jnp.array([[False, False], [False, True], [False, False]])
    rewards = jnp.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    next_value = jnp.full((3, 2), 10.0)
    absorbing = jnp.full((3, 2), 7.0)
    traj = _traj(terminated, truncated)
    # Environment rewards: scaled by reward_scale (1) and nothing else but the truncation bootstrap.
    got = learner_rewards(config, rewards, traj, next_value)
    np.testing.assert_allclose(got, rewards + 0.9 * 10.0 * truncated)
    # Learned rewards: standardised over the rollout; the absorbing reward with the same shift and scale.
    got = learner_rewards(config, rewards, traj, next_value, absorbing, learned=True)
    mean, std = 3.5, np.std(np.arange(1.0, 7.0))
    want = (np.asarray(rewards) - mean) / std
    want[1, 0] += 0.9 / 0.1 * (7.0 - mean) / std  # terminal: gamma / (1 - gamma) x the absorbing reward
    want[1, 1] += 0.9 * 10.0  # truncated: gamma x V(final_obs)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_offset_of_a_learned_reward_does_not_change_the_absorbing_objective():
    """With the absorbing tail, adding a constant to every learned reward leaves the standardised rewards unchanged
    (no survival bias from the reward's sign); without it the terminal step would differ."""
    config = EnvPPOConfig(gamma=0.9, normalize_learned_reward=False)
    terminated = jnp.array([[False], [True], [False]])
    traj = _traj(terminated, jnp.zeros_like(terminated))
    rewards, absorbing = jnp.array([[1.0], [2.0], [3.0]]), jnp.full((3, 1), -1.0)
    shifted = learner_rewards(config, rewards + 5.0, traj, jnp.zeros((3, 1)), absorbing + 5.0, learned=True)
    base = learner_rewards(config, rewards, traj, jnp.zeros((3, 1)), absorbing, learned=True)
    # Every step's discounted value shifts by 5 / (1 - gamma): 5 per step, and 5 * gamma / (1 - gamma) in the tail.
    np.testing.assert_allclose(shifted - base, 5.0 + 5.0 * 9.0 * np.asarray(terminated), rtol=1e-5)


def test_config_errors_are_named():
    with pytest.raises(ValueError, match="num_minibatches"):
        make_train(EnvPPOConfig(num_envs=3, num_steps=5, num_minibatches=4), envs.make("CartPole-v1"))
    with pytest.raises(ValueError, match="num_envs"):
        make_train(EnvPPOConfig(num_envs=0), envs.make("CartPole-v1"))


TINY = EnvPPOConfig(
    num_envs=2,
    num_steps=16,
    total_timesteps=64,
    update_epochs=1,
    num_minibatches=2,
    hidden=(8,),
    num_evals=2,
    eval_episodes=2,
)


def test_vmap_over_seeds_equals_separate_runs_continuous():
    env = envs.make("Pendulum-v1")
    train = make_train(TINY, env)
    keys = jax.random.split(jax.random.key(0), 2)
    batched_runner, batched = jax.jit(jax.vmap(train))(keys)
    single = jax.jit(train)
    for i in (1,):
        runner, metrics = single(keys[i])
        for key in ("eval/return", "train/episode_return", "loss/value"):
            np.testing.assert_allclose(batched[key][i], metrics[key], rtol=1e-4, atol=1e-4, equal_nan=True)
        flat = jax.tree.leaves(runner.params)
        flat_b = [x[i] for x in jax.tree.leaves(batched_runner.params)]
        for a, b in zip(flat, flat_b, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert batched["eval/return"].shape == (2, TINY.num_evals + 1)
    assert batched["env_steps"][0, -1] == TINY.num_updates * TINY.batch_size
    finite = [k for k, v in batched.items() if k != "train/episode_return" and not np.all(np.isfinite(v))]
    assert not finite


def test_ppo_learns_cartpole():
    # Stochastic evaluation: the first policy is near uniform (~20 steps), whatever its argmax would do.
    config = EnvPPOConfig(
        num_envs=4, num_steps=128, total_timesteps=40_960, num_evals=2, eval_episodes=8, deterministic_eval=False
    )
    _, metrics = jax.jit(make_train(config, envs.make("CartPole-v1")))(jax.random.key(0))
    returns = np.asarray(metrics["eval/return"])
    assert returns[0] < 60 and returns[-1] >= 150, returns

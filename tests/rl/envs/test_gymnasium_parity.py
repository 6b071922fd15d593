"""The JAX environments step like gymnasium 1.4 from the same states and actions.

States are gathered along random-action trajectories of the JAX environment (resetting after terminations), then
each one is loaded into gymnasium's environment (``env.unwrapped.state``) and stepped with the same action; next
observation, reward and termination must agree. gymnasium computes in float64, we in float32: the tolerance is a few
float32 ulps of the values involved.
"""

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stepjax.rl import envs

pytestmark = pytest.mark.parity

N_STATES = 400


def _trajectory_states(env, key, n):
    """``n`` consecutive (state, action) pairs of a random policy, restarting after each termination."""
    space = env.action_space

    def step(carry, key):
        _, state = carry
        k_act, k_step, k_reset = jax.random.split(key, 3)
        if isinstance(space, envs.Discrete):
            action = jax.random.randint(k_act, (), 0, space.n)
        else:
            # Beyond the bounds too, so the clipping paths are compared as well.
            action = jax.random.uniform(k_act, space.shape, jnp.float32, -1.5, 1.5) * jnp.asarray(space.high)
        _, new, _, done, _ = env.step(k_step, state, action)
        _, fresh = env.reset(k_reset)
        nxt = jax.tree.map(lambda a, b: jnp.where(done, a, b), fresh, new)
        return (None, nxt), (state, action)

    _, state = env.reset(key)
    _, (states, actions) = jax.lax.scan(step, (None, state), jax.random.split(key, n))
    return states, actions


def _gym_state(name, state, i):
    field = lambda f: float(np.asarray(getattr(state, f))[i])
    if name == "CartPole-v1":
        return np.array([field("x"), field("x_dot"), field("theta"), field("theta_dot")], np.float64)
    if name == "Pendulum-v1":
        return np.array([field("theta"), field("theta_dot")], np.float64)
    if name == "MountainCarContinuous-v0":
        return np.array([field("position"), field("velocity")], np.float64)
    return np.array([field("theta1"), field("theta2"), field("dtheta1"), field("dtheta2")], np.float64)


@pytest.mark.parametrize("name", sorted(envs.ENVIRONMENTS))
def test_step_matches_gymnasium(name):
    env = envs.ENVIRONMENTS[name]()
    states, actions = jax.jit(_trajectory_states, static_argnums=(0, 2))(env, jax.random.key(0), N_STATES)
    batch_step = jax.jit(jax.vmap(lambda s, a: env.step(jax.random.key(0), s, a)))
    obs, _, reward, terminated, info = batch_step(states, actions)
    gym_env = gym.make(name).unwrapped
    gym_env.reset(seed=0)
    n_terminal = 0
    for i in range(N_STATES):
        gym_env.state = _gym_state(name, states, i)
        gym_env.steps_beyond_terminated = None  # CartPole: a fresh state, not a step after termination
        action = np.asarray(actions[i])
        action = int(action) if action.ndim == 0 else action.astype(np.float32)
        g_obs, g_reward, g_terminated, g_truncated, _ = gym_env.step(action)
        np.testing.assert_allclose(np.asarray(obs[i]), g_obs, rtol=2e-6, atol=2e-6, err_msg=f"{name} state {i}")
        np.testing.assert_allclose(float(reward[i]), g_reward, rtol=2e-6, atol=2e-6, err_msg=f"{name} state {i}")
        assert bool(terminated[i]) == g_terminated and not g_truncated, (name, i)
        assert bool(info["terminated"][i]) == g_terminated
        n_terminal += g_terminated
    if name in ("CartPole-v1",):
        assert n_terminal > 5  # the comparison covered terminal transitions


def test_mountain_car_goal_and_left_wall():
    """Rarely reached branches, compared directly: the goal (reward 100, terminal) and the inelastic left wall."""
    env = envs.MountainCarContinuous()
    gym_env = gym.make("MountainCarContinuous-v0").unwrapped
    gym_env.reset(seed=0)
    outcomes = []
    cases = [(0.449, 0.0699, 1.0), (0.44, 0.01, 0.5), (-1.199, -0.05, -1.0), (-1.2, -0.07, 2.0)]
    for position, velocity, action in cases:
        state = envs.mountain_car.MountainCarState(jnp.float32(position), jnp.float32(velocity))
        obs, _, reward, terminated, _ = env.step(jax.random.key(0), state, jnp.array([action], jnp.float32))
        gym_env.state = np.array([position, velocity], np.float32)
        g_obs, g_reward, g_terminated, _, _ = gym_env.step(np.array([action], np.float32))
        np.testing.assert_allclose(np.asarray(obs), g_obs, rtol=2e-6, atol=2e-6)
        np.testing.assert_allclose(float(reward), g_reward, rtol=2e-6, atol=2e-6)
        assert bool(terminated) == g_terminated
        outcomes.append(g_terminated)
    assert outcomes == [True, True, False, False]  # the goal reached twice, the wall hit twice


@pytest.mark.parametrize("name", sorted(envs.ENVIRONMENTS))
def test_reset_distribution_matches_gymnasium_bounds(name):
    """Resets follow gymnasium's uniform ranges (same bounds; samples cannot be equal across RNGs)."""
    env = envs.ENVIRONMENTS[name]()
    obs, _ = jax.vmap(env.reset)(jax.random.split(jax.random.key(1), 512))
    gym_env = gym.make(name)
    g_obs = np.stack([gym_env.reset(seed=s)[0] for s in range(512)])
    lo, hi = np.asarray(obs).min(0), np.asarray(obs).max(0)
    g_lo, g_hi = g_obs.min(0), g_obs.max(0)
    spread = np.maximum(g_hi - g_lo, 1e-6)
    np.testing.assert_allclose(lo, g_lo, atol=0.05 * spread.max() + 1e-6)
    np.testing.assert_allclose(hi, g_hi, atol=0.05 * spread.max() + 1e-6)
    assert gym.make(name).spec.max_episode_steps == env.max_steps


def test_acrobot_terminal_states():
    """Random actions never swing the Acrobot up; compare its terminal branch (reward 0) from states near the top."""
    env = envs.Acrobot()
    gym_env = gym.make("Acrobot-v1").unwrapped
    gym_env.reset(seed=0)
    outcomes = []
    for theta1, theta2, action in [(3.0, 0.1, 0), (2.9, -0.3, 2), (1.2, 0.2, 1), (-2.5, -0.8, 2), (0.3, 2.0, 0)]:
        state = envs.acrobot.AcrobotState(*(jnp.float32(x) for x in (theta1, theta2, 0.5, -0.5)))
        obs, _, reward, terminated, _ = env.step(jax.random.key(0), state, jnp.int32(action))
        gym_env.state = np.array([theta1, theta2, 0.5, -0.5], np.float32)
        g_obs, g_reward, g_terminated, _, _ = gym_env.step(action)
        np.testing.assert_allclose(np.asarray(obs), g_obs, rtol=2e-6, atol=2e-6)
        assert float(reward) == g_reward and bool(terminated) == g_terminated
        outcomes.append(g_terminated)
    assert True in outcomes and False in outcomes

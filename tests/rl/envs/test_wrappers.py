"""Wrappers: time limits, absorbing fixed horizons, automatic resets; vmapping over environments and parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stepjax.rl import envs


def _run(env, actions, key=jax.random.key(0)):
    """Steps ``env`` through ``actions`` from a reset; returns stacked (obs, reward, done, info)."""

    def step(carry, xs):
        state = carry
        action, k = xs
        obs, state, reward, done, info = env.step(k, state, action)
        return state, (obs, reward, done, info)

    _, state = env.reset(key)
    keys = jax.random.split(jax.random.key(1), len(actions))
    _, out = jax.lax.scan(step, state, (actions, keys))
    return jax.device_get(out)


def test_time_limit_truncates_at_the_registered_limit():
    env = envs.make("Pendulum-v1", auto_reset=False)
    _, _, done, info = _run(env, jnp.zeros((205, 1)))
    assert env.max_steps == 200
    np.testing.assert_array_equal(np.nonzero(done)[0], np.arange(199, 205))  # stays done (no reset) after 200 steps
    assert info["truncated"][199] and not info["terminated"].any()
    with pytest.raises(ValueError, match="max_steps"):
        envs.TimeLimit(envs.Pendulum(), 0)


def test_termination_is_not_truncation():
    env = envs.make("CartPole-v1", auto_reset=False)
    _, _, done, info = _run(env, jnp.ones((50,), jnp.int32))  # always push right: falls within ~10 steps
    first = int(np.argmax(done))
    assert 5 < first < 50 and info["terminated"][first] and not info["truncated"][first]


def test_auto_reset_starts_a_new_episode_and_reports_the_final_observation():
    env = envs.make("CartPole-v1")
    obs, _, done, info = _run(env, jnp.ones((60,), jnp.int32))
    ends = np.nonzero(done)[0]
    assert len(ends) >= 2  # several episodes in 60 steps
    t = ends[0]
    assert np.abs(info["final_obs"][t][2]) > 0.2 or np.abs(info["final_obs"][t][0]) > 2.4  # the failed state
    assert np.all(np.abs(obs[t]) <= 0.05)  # the next episode's first observation
    not_done = ~done
    np.testing.assert_array_equal(obs[not_done], info["final_obs"][not_done])


def test_fixed_horizon_absorbs_and_keeps_the_true_return():
    actions = jnp.ones((500,), jnp.int32)
    plain = envs.make("CartPole-v1", auto_reset=False)
    fixed = envs.make("CartPole-v1", fixed_horizon=True, auto_reset=False)
    _, p_reward, p_done, _ = _run(plain, actions)
    obs, reward, done, info = _run(fixed, actions)
    end = int(np.argmax(p_done))
    assert reward.sum() == p_reward[: end + 1].sum() == end + 1  # the true return: 1 per step until the fall
    assert not info["terminated"].any() and np.nonzero(done)[0].tolist() == [499]  # only the horizon ends it
    assert info["absorbed"][end + 1 :].all() and not info["absorbed"][: end + 1].any()
    np.testing.assert_array_equal(obs[end + 1 :], np.broadcast_to(obs[end], obs[end + 1 :].shape))
    assert not fixed.can_terminate and plain.can_terminate


def test_vmap_over_environments_and_parameters():
    env = envs.make("Pendulum-v1")
    keys = jax.random.split(jax.random.key(0), 3)
    _, state = jax.vmap(env.reset)(keys)
    params = jax.tree.map(lambda x: jnp.full((3,), x), env.default_params())
    params = params.replace(g=jnp.array([0.0, 10.0, 20.0]))
    step = jax.jit(jax.vmap(env.step))
    # Same start state in all three, different gravity: different next angular velocities, in gravity's order.
    same = jax.tree.map(lambda x: jnp.broadcast_to(x[:1], x.shape), state)
    _, new_state, _, _, _ = step(keys, same, jnp.zeros((3, 1)), params)
    speeds = np.asarray(new_state.inner.theta_dot - same.inner.theta_dot)
    assert speeds[0] == pytest.approx(0.0, abs=1e-7) and abs(speeds[2]) == pytest.approx(2 * abs(speeds[1]), rel=1e-5)


def test_make_names_the_unknown_environment():
    with pytest.raises(ValueError, match="unknown environment 'Cartpole'"):
        envs.make("Cartpole")

"""PDEIL's reward: the alpha = 1 limit (expert action first in every state), the continuous closed form, per-row
action selection, agreement with the direct ratio, and finiteness on singular and extreme densities."""

import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from stepjax.irl import densities as dens
from stepjax.irl.classifier import action_log_prob
from stepjax.irl.pdeil import PDEILConfig, PDEILReward, pdeil_log_ratio, shape_reward
from stepjax.rl.env_ppo import Transition
from stepjax.rl.envs import Box, Discrete

N_STATES, N_ACTIONS = 6, 3


def expert_action(s):
    return (2 * s + 1) % N_ACTIONS


def _env(space, obs_size):
    return types.SimpleNamespace(action_space=space, observation_size=obs_size, can_terminate=False, name="toy")


def _traj(obs):
    """A rollout of states only (what ``update`` uses): ``obs [T, N, d]``."""
    zeros = jnp.zeros(obs.shape[:2])
    return Transition(obs, zeros, zeros, zeros, zeros, zeros, zeros, zeros, zeros, obs, zeros)


@functools.cache
def _chain_model(alpha):
    """A 6-state chain MDP observed one-hot (a singular covariance: the coordinates sum to 1), expert demos
    visiting every state, and an agent that sits in state 0."""
    states = np.repeat(np.arange(N_STATES), 40)
    demos = {"obs": np.eye(N_STATES, dtype=np.float32)[states], "action": expert_action(states)}
    model = PDEILReward(
        PDEILConfig(alpha=alpha, classifier_steps=300, classifier_hidden=(32,)),
        demos,
        _env(Discrete(N_ACTIONS), N_STATES),
        rollout_size=16,
    )
    state = jax.jit(model.init)(jax.random.key(0))
    agent_obs = jnp.broadcast_to(jnp.eye(N_STATES)[0], (4, 4, N_STATES))
    state, _ = jax.jit(model.update, static_argnums=2)(state, _traj(agent_obs), None, jax.random.key(1))
    return model, state


def _reward_table(model, state):
    obs = jnp.repeat(jnp.eye(N_STATES), N_ACTIONS, 0)
    actions = jnp.tile(jnp.arange(N_ACTIONS), N_STATES)
    return np.asarray(jax.jit(model.log_ratio)(state, obs, actions)).reshape(N_STATES, N_ACTIONS), obs, actions


def test_alpha_one_ranks_the_expert_action_first_in_every_state():
    model, state = _chain_model(alpha=1.0)
    table, obs, actions = _reward_table(model, state)
    assert np.all(np.isfinite(table))
    np.testing.assert_array_equal(table.argmax(1), expert_action(np.arange(N_STATES)))
    # alpha = 1: r = pi_E(a | s) exactly; the state densities (expert's and agent's) cancel or drop out.
    log_pi = action_log_prob(model.classifier_graphdef, state.classifier, obs, actions)
    np.testing.assert_allclose(table.reshape(-1), np.asarray(log_pi), atol=1e-4)
    assert np.all(table.max(1) > np.log(0.9))


def test_alpha_half_keeps_the_ranking_and_penalises_over_visited_states():
    model1, state1 = _chain_model(alpha=1.0)
    model, state = _chain_model(alpha=0.5)
    table, _, _ = _reward_table(model, state)
    table1, _, _ = _reward_table(model1, state1)
    np.testing.assert_array_equal(table.argmax(1), expert_action(np.arange(N_STATES)))
    # The agent lives in state 0 (rho_pi(0) >> rho_E(0)): its reward drops there, and rises where the agent
    # never goes (rho_pi ~ 0: r -> pi_E / alpha = 2 pi_E).
    assert table[0].max() < table1[0].max() - 0.5
    np.testing.assert_allclose(table[1:].max(1), table1[1:].max(1) + np.log(2.0), atol=1e-3)


def test_discrete_rewards_select_each_rows_own_action():
    """DI-engine's ``predict_proba(s)[a]`` picks rows, not each row's action; ours is ``[N]`` and per row."""
    model, state = _chain_model(alpha=0.5)
    obs = jnp.eye(N_STATES)[jnp.array([0, 1, 2, 3, 4, 5, 0, 3])]
    actions = jnp.array([0, 1, 2, 2, 1, 0, 1, 0])
    log_ratio = jax.jit(model.log_ratio)
    batch = log_ratio(state, obs, actions)
    assert batch.shape == (8,)
    one_by_one = [float(log_ratio(state, obs[i : i + 1], actions[i : i + 1])[0]) for i in range(8)]
    np.testing.assert_allclose(np.asarray(batch), one_by_one, rtol=1e-5, atol=1e-5)
    table, _, _ = _reward_table(model, state)
    np.testing.assert_allclose(np.asarray(batch), table[np.array([0, 1, 2, 3, 4, 5, 0, 3]), actions], atol=1e-5)


def test_continuous_alpha_one_is_the_gaussian_conditional_of_the_expert():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(2000, 2)).astype(np.float32)
    a = (0.4 * s[:, :1] - 0.2 * s[:, 1:] + 0.1 * rng.normal(size=(2000, 1))).astype(np.float32)
    model = PDEILReward(
        PDEILConfig(alpha=1.0, shrinkage=0.0, reg=0.0), {"obs": s, "action": a}, _env(Box((-1.0,), (1.0,)), 2), 16
    )
    state = jax.jit(model.init)(jax.random.key(0))
    qs, qa = s[:50], a[:50] + 0.05
    got = np.asarray(jax.jit(model.log_ratio)(state, jnp.asarray(qs), jnp.asarray(qa)))
    # Closed form in float64 from the data's own moments: N(a; mu_a + S_as S_ss^-1 (s - mu_s), S_aa - S_as S_ss^-1 S_sa)
    x = np.concatenate([s, a], 1).astype(np.float64)
    mu, cov = x.mean(0), np.cov(x, rowvar=False, bias=True) + dens.ABS_FLOOR * np.eye(3)
    gain = cov[2:, :2] @ np.linalg.inv(cov[:2, :2])
    cond_mean = mu[2] + (qs - mu[:2]) @ gain[0]
    cond_var = cov[2, 2] - (gain @ cov[:2, 2:])[0, 0]
    want = stats.norm(cond_mean, np.sqrt(cond_var)).logpdf(qa[:, 0])
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=2e-3)


@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.5, 1.0])
def test_log_ratio_equals_the_direct_ratio_where_that_is_representable(alpha):
    rng = np.random.default_rng(1)
    lj, ls, la = (rng.uniform(-5, 3, 100) for _ in range(3))
    direct = np.exp(lj) / (alpha * np.exp(ls) + (1 - alpha) * np.exp(la))
    got = pdeil_log_ratio(jnp.asarray(lj), jnp.asarray(ls), jnp.asarray(la), alpha)
    np.testing.assert_allclose(np.exp(np.asarray(got, np.float64)), direct, rtol=1e-4)


def test_extreme_density_ratios_stay_finite():
    big = jnp.array([3e4, -3e4, -jnp.inf, 0.0, -3e4, 88.0])
    lj = jnp.array([-3e4, 3e4, 0.0, -jnp.inf, -jnp.inf, 100.0])
    ls = jnp.array([3e4, -3e4, -jnp.inf, 0.0, -jnp.inf, -100.0])
    with np.errstate(all="ignore"):  # the direct formula overflows / divides 0 by 0
        naive = np.exp(np.asarray(lj)) / (0.5 * np.exp(np.asarray(ls)) + 0.5 * np.exp(np.asarray(big)))
    assert not np.all(np.isfinite(naive))
    for alpha in (0.0, 0.5, 1.0):
        log_r = pdeil_log_ratio(lj, ls, big, alpha)
        assert not np.any(np.isnan(np.asarray(log_r)))
        for form in ("ratio", "log"):
            r = np.asarray(shape_reward(log_r, form, -10.0, 5.0))
            assert np.all(np.isfinite(r)), (alpha, form, r)
            lo, hi = (np.exp(-10.0), np.exp(5.0)) if form == "ratio" else (-10.0, 5.0)
            assert np.all((r >= lo - 1e-6 * abs(lo)) & (r <= hi + 1e-6 * abs(hi)))


@pytest.mark.parametrize("density", ["gaussian", "kde", "gmm"])
def test_rewards_finite_with_singular_expert_data_and_far_away_agents(density):
    rng = np.random.default_rng(2)
    s = rng.normal(size=(300, 2)).astype(np.float32)
    s = np.concatenate([s, np.zeros((300, 1), np.float32), s[:, :1]], 1)  # a constant and a duplicated column
    a = np.clip(0.5 * s[:, :1], -1, 1).astype(np.float32)  # deterministic expert: a is a function of s
    config = PDEILConfig(density=density, agent_density=density, gmm_components=3, gmm_iterations=5)
    model = PDEILReward(config, {"obs": s, "action": a}, _env(Box((-1.0,), (1.0,)), 4), rollout_size=32)
    state = jax.jit(model.init)(jax.random.key(0))
    far = jnp.asarray(rng.normal(size=(2, 16, 4)) * 1e3, jnp.float32)
    state, metrics = jax.jit(model.update, static_argnums=2)(state, _traj(far), None, jax.random.key(1))
    for obs, act in ((s[:32], a[:32]), (np.asarray(far).reshape(-1, 4), -a[:32])):
        traj = _traj(jnp.asarray(obs).reshape(2, 16, 4))._replace(env_action=jnp.asarray(act).reshape(2, 16, 1))
        r = np.asarray(jax.jit(model.reward, static_argnums=2)(state, traj, None))
        assert r.shape == (2, 16) and np.all(np.isfinite(r)), r
    assert all(np.isfinite(float(v)) for v in metrics.values())

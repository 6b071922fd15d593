"""GAIL and AIRL reward models: their rewards are the documented functions of the discriminator, the
discriminator learns to separate expert from agent data, and the variable-horizon guard."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from stepjax.irl import AdversarialConfig, AIRLReward, BCConfig, GAILReward, PDEILConfig, VariableHorizonError
from stepjax.irl.train import make_irl_train
from stepjax.rl import envs
from stepjax.rl.env_policies import Categorical
from stepjax.rl.env_ppo import EnvPPOConfig, Transition

GAMMA = 0.9


def _demos(n=256, seed=0):
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, 4)).astype(np.float32) * 0.1
    return {
        "obs": obs,
        "next_obs": obs + 0.01,
        "action": (obs[:, 2] > 0).astype(np.int32),
        "terminated": np.zeros(n, bool),
    }


def _traj(obs, action, next_obs, terminated):
    z = jnp.zeros(obs.shape[:2])
    return Transition(obs, action, action, z, z, z, terminated, z.astype(bool), terminated, next_obs, z.astype(bool))


def _uniform_policy(obs):
    return Categorical(jnp.zeros((*obs.shape[:-1], 2)))


def test_gail_reward_is_softplus_of_the_logit():
    env = envs.make("CartPole-v1")
    model = GAILReward(AdversarialConfig(hidden=(16,)), _demos(), env, GAMMA)
    state = model.init(jax.random.key(0))
    obs = jax.random.normal(jax.random.key(1), (3, 5, 4))
    action = jax.random.randint(jax.random.key(2), (3, 5), 0, 2)
    traj = _traj(obs, action, obs, jnp.zeros((3, 5), bool))
    logit = nnx.merge(model.graphdef, state.params)(jnp.concatenate([obs, jax.nn.one_hot(action, 2)], -1))[..., 0]
    want = -np.log1p(-jax.nn.sigmoid(np.asarray(logit, np.float64)))  # -log(1 - D)
    np.testing.assert_allclose(model.reward(state, traj, _uniform_policy), want, rtol=1e-5, atol=1e-6)


def test_airl_logit_is_shaped_reward_minus_log_policy():
    env = envs.make("CartPole-v1")
    model = AIRLReward(AdversarialConfig(hidden=(16,)), _demos(), env, GAMMA)
    state = model.init(jax.random.key(0))
    obs, nxt = jax.random.normal(jax.random.key(1), (2, 3, 4, 4))
    action = jax.random.randint(jax.random.key(2), (3, 4), 0, 2)
    terminated = jnp.zeros((3, 4), bool).at[1, 2].set(True)
    policy = lambda o: Categorical(jnp.stack([o[..., 0], -o[..., 0]], -1))
    nets = nnx.merge(model.graphdef, state.params)
    g = nets.g(jnp.concatenate([obs, jax.nn.one_hot(action, 2)], -1))[..., 0]
    h, h_next = nets.h(obs)[..., 0], nets.h(nxt)[..., 0]
    log_pi = policy(obs).log_prob(action)
    want = g + GAMMA * (1.0 - terminated) * h_next - h - log_pi
    traj = _traj(obs, action, nxt, terminated)
    np.testing.assert_allclose(model.reward(state, traj, policy), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.learned_reward(state, traj, policy), g, rtol=1e-6)  # g: the recovered reward


@pytest.mark.parametrize("cls", [GAILReward, AIRLReward])
def test_discriminator_separates_expert_from_agent(cls):
    env = envs.make("CartPole-v1")
    config = AdversarialConfig(hidden=(32,), learning_rate=3e-3, disc_updates=100, batch_size=64)
    model = cls(config, _demos(), env, GAMMA)
    state = model.init(jax.random.key(0))
    agent_obs = jax.random.normal(jax.random.key(1), (8, 16, 4)) + 1.0  # elsewhere
    action = jax.random.randint(jax.random.key(2), (8, 16), 0, 2)
    traj = _traj(agent_obs, action, agent_obs + 0.01, jnp.zeros((8, 16), bool))
    state, metrics = jax.jit(model.update, static_argnums=2)(state, traj, _uniform_policy, jax.random.key(3))
    assert float(metrics[f"{model.name}/disc_accuracy"]) > 0.8
    demos = {k: jnp.asarray(v).reshape(16, 16, *v.shape[1:]) for k, v in _demos().items()}
    expert_traj = _traj(demos["obs"], demos["action"], demos["next_obs"], demos["terminated"])
    r_expert = model.reward(state, expert_traj, _uniform_policy).mean()
    r_agent = model.reward(state, traj, _uniform_policy).mean()
    assert float(r_expert) > float(r_agent) + 1.0


@pytest.mark.parametrize("algorithm", ["pdeil", "gail", "airl"])
def test_variable_horizon_guard(algorithm):
    config = PDEILConfig() if algorithm == "pdeil" else AdversarialConfig()
    ppo = EnvPPOConfig(num_envs=2, num_steps=8, num_minibatches=1)
    demos = _demos()
    with pytest.raises(VariableHorizonError, match=r"CartPole-v1 can end episodes.*fixed_horizon=True"):
        make_irl_train(algorithm, ppo, config, envs.make("CartPole-v1"), demos)
    # Each way out: a fixed horizon, the absorbing-state bootstrap, an explicit opt-in; Pendulum never terminates.
    make_irl_train(algorithm, ppo, config, envs.make("CartPole-v1", fixed_horizon=True), demos)
    absorbing = EnvPPOConfig(num_envs=2, num_steps=8, num_minibatches=1, absorbing_bootstrap=True)
    make_irl_train(algorithm, absorbing, config, envs.make("CartPole-v1"), demos)
    opt_in = type(config)(allow_variable_horizon=True)
    make_irl_train(algorithm, ppo, opt_in, envs.make("CartPole-v1"), demos)
    pend = {"obs": np.zeros((8, 3), np.float32), "next_obs": np.zeros((8, 3), np.float32)}
    pend.update(action=np.zeros((8, 1), np.float32), terminated=np.zeros(8, bool))
    make_irl_train(algorithm, ppo, config, envs.make("Pendulum-v1"), pend)
    make_irl_train("bc", ppo, BCConfig(), envs.make("CartPole-v1"), demos)  # BC never acts: no guard

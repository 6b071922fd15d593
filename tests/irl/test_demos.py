"""Demonstrations: collected rows are consistent transitions; the .npz round-trips through grain; bad files are
named."""

import jax
import numpy as np
import pytest

from stepjax.irl.demos import DemoSource, collect_demos, load_demos, save_demos
from stepjax.rl import envs
from stepjax.rl.env_ppo import EnvPPOConfig, actor_critic, init_params

CONFIG = EnvPPOConfig(hidden=(8,))


@pytest.fixture(scope="module")
def demos():
    env = envs.make("CartPole-v1")
    params = init_params(CONFIG, env, jax.random.key(0))
    # A stochastic near-uniform policy, so that episodes end (~20 steps) inside the 63 steps per environment.
    return collect_demos(
        env, actor_critic(CONFIG, env), params, jax.random.key(1), 250, num_envs=4, deterministic=False
    )


def test_collected_rows_are_consecutive_transitions(demos):
    assert demos["obs"].shape == (250, 4) and demos["action"].shape == (250,)
    assert set(np.unique(demos["action"])) <= {0, 1} and str(demos["env_name"]) == "CartPole-v1"
    # Rows run environment by environment (63 steps each, the last one cut): within an environment, the next row's
    # observation is this row's next_obs unless the episode ended (then a fresh reset state).
    for env_idx in range(3):
        rows = slice(env_idx * 63, (env_idx + 1) * 63)
        obs, nxt = demos["obs"][rows], demos["next_obs"][rows]
        ended = demos["terminated"][rows] | demos["truncated"][rows]
        assert ended[:-1].any()
        np.testing.assert_array_equal(nxt[:-1][~ended[:-1]], obs[1:][~ended[:-1]])
        assert np.all(np.abs(obs[1:][ended[:-1]]) <= 0.05)
    np.testing.assert_array_equal(demos["reward"], np.ones(250, np.float32))
    # One return per finished episode (2 more rows were collected than kept), each a whole number of steps.
    n_ended = int((demos["terminated"] | demos["truncated"]).sum())
    assert n_ended > 0 and n_ended <= len(demos["episode_returns"]) <= n_ended + 2
    returns = demos["episode_returns"]
    assert np.all(returns >= 1) and np.all(returns == np.round(returns))


def test_npz_round_trip_through_grain(demos, tmp_path):
    path = save_demos(tmp_path / "demos.npz", demos)
    source = DemoSource(path)
    assert len(source) == 250 and set(source[3]) == {
        "obs",
        "action",
        "next_obs",
        "reward",
        "terminated",
        "truncated",
    }
    loaded = load_demos(path, env_name="CartPole-v1")
    for key in ("obs", "action", "next_obs", "reward", "terminated", "truncated", "episode_returns"):
        np.testing.assert_array_equal(loaded[key], demos[key])
    shuffled = load_demos(path, shuffle_seed=0, num_transitions=250)
    order = np.lexsort(shuffled["obs"].T)
    np.testing.assert_array_equal(shuffled["obs"][order], demos["obs"][np.lexsort(demos["obs"].T)])
    assert not np.array_equal(shuffled["obs"], demos["obs"])
    assert len(load_demos(path, num_transitions=10)["obs"]) == 10


def test_bad_files_are_named(demos, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere\.npz"):
        load_demos(tmp_path / "nowhere.npz")
    broken = {k: v for k, v in demos.items() if k != "next_obs"}
    with pytest.raises(ValueError, match="next_obs"):
        save_demos(tmp_path / "x.npz", broken)
    np.savez(tmp_path / "partial.npz", **broken)
    with pytest.raises(ValueError, match=r"partial\.npz.*next_obs"):
        load_demos(tmp_path / "partial.npz")
    path = save_demos(tmp_path / "demos.npz", demos)
    with pytest.raises(ValueError, match="'CartPole-v1', not 'Pendulum-v1'"):
        load_demos(path, env_name="Pendulum-v1")
    with pytest.raises(ValueError, match=r"asked for 999 transitions, the file holds 250"):
        load_demos(path, num_transitions=999)

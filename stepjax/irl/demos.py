"""Expert demonstrations: collect transitions with a trained policy, store them in a ``.npz`` file, read them back
through grain (a random-access source of per-transition records, batched by ``grain.MapDataset``).

A demonstration set is a dict of arrays with one row per transition:
``obs [N, d]``, ``action [N]`` (int, discrete) or ``[N, k]`` (float, continuous: what the environment received),
``next_obs [N, d]`` (the state reached, before any reset), ``reward [N]``, ``terminated [N]``, ``truncated [N]``;
plus ``episode_returns [E]`` (true returns of the episodes completed while collecting) and ``env_name``.
Rows are ordered environment by environment, so each environment's trajectory is contiguous.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from stepjax.rl.env_policies import to_env_action
from stepjax.rl.envs.base import Environment

TRANSITION_KEYS = ("obs", "action", "next_obs", "reward", "terminated", "truncated")


def collect_demos(
    env: Environment,
    graphdef: nnx.GraphDef,
    params: nnx.State,
    key: jax.Array,
    num_transitions: int,
    *,
    num_envs: int = 8,
    deterministic: bool = True,
) -> dict[str, np.ndarray]:
    """Runs the policy in ``num_envs`` copies of ``env`` (with automatic resets) for ``ceil(N / num_envs)`` steps
    and keeps the first ``num_transitions`` rows. ``deterministic``: the policy's mode (PDEIL assumes a
    deterministic expert)."""
    steps = -(-num_transitions // num_envs)
    space = env.action_space

    @jax.jit
    def run(key):
        k_reset, k_run = jax.random.split(key)
        obs, state = jax.vmap(env.reset)(jax.random.split(k_reset, num_envs))

        def step(carry, key):
            obs, state, ret = carry
            k_act, k_env = jax.random.split(key)
            dist = nnx.merge(graphdef, params).policy(obs)
            action = dist.mode() if deterministic else dist.sample(k_act)
            env_action = to_env_action(action, space)
            next_obs, state, reward, done, info = jax.vmap(env.step)(
                jax.random.split(k_env, num_envs), state, env_action
            )
            ret = ret + reward
            row = {
                "obs": obs,
                "action": env_action,
                "next_obs": info["final_obs"],
                "reward": reward,
                "terminated": info["terminated"],
                "truncated": info["truncated"],
                "finished_return": jnp.where(done, ret, jnp.nan),
            }
            return (next_obs, state, jnp.where(done, 0.0, ret)), row

        init = (obs, state, jnp.zeros((num_envs,), jnp.float32))
        _, rows = jax.lax.scan(step, init, jax.random.split(k_run, steps))
        return rows

    rows = jax.device_get(run(key))
    returns = rows.pop("finished_return").reshape(-1)
    demos = {k: np.swapaxes(v, 0, 1).reshape((-1, *v.shape[2:]))[:num_transitions] for k, v in rows.items()}
    demos["episode_returns"] = returns[~np.isnan(returns)].astype(np.float32)
    demos["env_name"] = np.asarray(env.name)
    return demos


def save_demos(path: str | os.PathLike, demos: dict[str, Any]) -> str:
    """Writes ``demos`` to ``path`` (``.npz``, uncompressed) atomically; returns the path."""
    path = os.fspath(path)
    missing = [k for k in TRANSITION_KEYS if k not in demos]
    if missing:
        raise ValueError(f"save_demos: demonstrations lack {missing}; expected keys {list(TRANSITION_KEYS)}")
    tmp = path + ".tmp.npz"
    np.savez(tmp, **{k: np.asarray(v) for k, v in demos.items()})
    os.replace(tmp, path)
    return path


class DemoSource:
    """grain random-access source over a demonstrations ``.npz``: record ``i`` is ``{key: array[i]}`` for the
    transition keys. Validates the file when opened (missing keys, row counts that disagree)."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"demonstrations file not found: {self.path!r}")
        with np.load(self.path, allow_pickle=False) as f:
            missing = [k for k in TRANSITION_KEYS if k not in f.files]
            if missing:
                raise ValueError(f"{self.path}: missing arrays {missing}; expected {list(TRANSITION_KEYS)}")
            self._arrays = {k: f[k] for k in TRANSITION_KEYS}
            self.metadata = {k: f[k] for k in f.files if k not in TRANSITION_KEYS}
        sizes = {k: len(v) for k, v in self._arrays.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"{self.path}: arrays have different row counts {sizes}")
        self._len = next(iter(sizes.values()))

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        index = int(index)
        if not 0 <= index < self._len:
            raise IndexError(f"{self.path}: transition {index} out of range [0, {self._len})")
        return {k: v[index] for k, v in self._arrays.items()}

    def __repr__(self) -> str:
        return f"DemoSource({self.path!r}, len={self._len})"


def load_demos(
    path: str | os.PathLike,
    *,
    num_transitions: int | None = None,
    shuffle_seed: int | None = None,
    env_name: str | None = None,
) -> dict[str, np.ndarray]:
    """Reads a demonstrations file through grain into one dict of arrays.

    Args:
      num_transitions: keep the first ``n`` (after the optional shuffle); None keeps all.
      shuffle_seed: shuffle transitions with grain's deterministic shuffle.
      env_name: if given, the file's ``env_name`` must match (a CartPole file cannot train a Pendulum imitator).
    """
    import grain

    source = DemoSource(path)
    stored = source.metadata.get("env_name")
    if env_name is not None and stored is not None and str(stored) != env_name:
        raise ValueError(f"{source.path}: demonstrations are for {str(stored)!r}, not {env_name!r}")
    n = len(source) if num_transitions is None else num_transitions
    if not 0 < n <= len(source):
        raise ValueError(f"{source.path}: asked for {n} transitions, the file holds {len(source)}")
    ds = grain.MapDataset.source(source)
    if shuffle_seed is not None:
        ds = ds.shuffle(seed=shuffle_seed)
    batch = ds[:n].batch(n)[0]
    out = {k: np.asarray(v) for k, v in batch.items()}
    for k, v in source.metadata.items():
        out[k] = np.asarray(v)
    return out

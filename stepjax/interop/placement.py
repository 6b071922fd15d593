"""Target shardings of a model's parameters, and placing host buffers onto them without extra host copies."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, SingleDeviceSharding

from stepjax.sharding import current_rules, named_shardings, normalize_rules

Path = tuple[str | int, ...]


def abstract_params(build: Callable[[], nnx.Module]) -> tuple[nnx.GraphDef, nnx.State]:
    """``(graphdef, state)`` of the model ``build()`` makes, traced abstractly: no parameter is allocated."""
    return nnx.split(nnx.eval_shape(build))


def flat_variables(state: nnx.State) -> dict[Path, nnx.Variable]:
    """``{path: variable}`` of a state, paths as tuples of str/int keys."""
    flat = nnx.to_flat_state(state) if hasattr(nnx, "to_flat_state") else state.flat_state()
    return {tuple(path): var for path, var in flat}


def param_shardings(state: nnx.State, mesh: Mesh | None, rules: Any = None) -> dict[Path, jax.sharding.Sharding]:
    """``{path: sharding}``: ``NamedSharding`` from each parameter's logical axes and ``rules`` (default: the active
    table, see ``stepjax.sharding.use_rules``); with ``mesh=None`` everything goes to the first default device."""
    if mesh is None:
        device = SingleDeviceSharding(jax.devices()[0])
        return dict.fromkeys(flat_variables(state), device)
    rules = current_rules() if rules is None else normalize_rules(rules)
    shardings = flat_variables(named_shardings(state, mesh, rules))
    return {path: var.get_value() for path, var in shardings.items()}


def aligned_empty(shape: tuple[int, ...], dtype: np.dtype, alignment: int = 64) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on an ``alignment``-byte boundary.

    JAX's CPU client adopts such a buffer as a device array without copying (``device_put(..., may_alias=True)``),
    so a parameter read into it lives in host memory exactly once.
    """
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + alignment, np.uint8)
    start = (-raw.ctypes.data) % alignment
    return raw[start : start + nbytes].view(dtype).reshape(shape)


def place(host: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
    """``host`` as a ``jax.Array`` with ``sharding``; the caller must not modify ``host`` afterwards.

    One device: the buffer is adopted when the backend allows it (CPU), else copied once. A mesh: each device gets
    its slice (``make_array_from_callback`` also works when the mesh spans hosts: each host fills its devices).
    """
    if isinstance(sharding, SingleDeviceSharding) or (isinstance(sharding, NamedSharding) and sharding.mesh.size == 1):
        return jax.device_put(host, sharding, may_alias=True)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

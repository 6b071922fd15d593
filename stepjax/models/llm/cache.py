"""A preallocated key/value cache for incremental decoding, sharded by logical axis names.

Layout (agreed with the decode-attention kernel in ``stepjax.kernels``):

* per layer, ``k`` and ``v`` of shape ``[batch, max_len, num_kv_heads, head_dim]``; with ``cfg.scan_layers`` the
  layers are stacked on a leading axis, ``[layers, batch, max_len, num_kv_heads, head_dim]`` (one array each);
  otherwise ``k`` and ``v`` are tuples of per-layer arrays;
* ``lengths [batch]`` int32: how many cache slots of each row hold valid keys. Slot ``j`` holds the token at
  position ``j`` of its row (prompts are right-padded, so no row is shifted).

Keys are stored after RoPE, as Hugging Face does; ALiBi biases are recomputed from slot indices.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding

from stepjax.sharding import LAYERS_AXIS, constrain, logical_to_spec
from stepjax.sharding.rules import Rules

#: Logical names of one layer's cache array ``[batch, max_len, kv_heads, head_dim]``.
CACHE_AXES = ("act_batch", "cache_len", "act_kv_heads", "head_dim")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    """Keys, values and per-row valid lengths. A pytree: pass it through ``jax.jit`` and loops as is."""

    k: jax.Array | tuple[jax.Array, ...]
    v: jax.Array | tuple[jax.Array, ...]
    lengths: jax.Array

    @property
    def stacked(self) -> bool:
        """True for the scanned-layers layout (one ``[layers, ...]`` array per k / v)."""
        return not isinstance(self.k, tuple)

    @property
    def batch_size(self) -> int:
        return self.lengths.shape[0]

    @property
    def max_len(self) -> int:
        return (self.k if self.stacked else self.k[0]).shape[-3]

    def logical_axes(self) -> KVCache:
        """Same structure, each array replaced by its logical axis names."""
        layer = (LAYERS_AXIS, *CACHE_AXES) if self.stacked else CACHE_AXES
        kv = layer if self.stacked else tuple(layer for _ in self.k)
        return KVCache(k=kv, v=kv, lengths=("act_batch",))

    def repeat(self, n: int) -> KVCache:
        """Each row repeated ``n`` times, consecutively (row ``b`` -> rows ``b * n ... b * n + n - 1``)."""
        axis = 1 if self.stacked else 0
        rep = lambda x, a=axis: jnp.repeat(x, n, axis=a)
        k = rep(self.k) if self.stacked else tuple(rep(x) for x in self.k)
        v = rep(self.v) if self.stacked else tuple(rep(x) for x in self.v)
        return constrain_cache(KVCache(k=k, v=v, lengths=jnp.repeat(self.lengths, n)))


def init_cache(
    num_layers: int,
    batch: int,
    max_len: int,
    num_kv_heads: int,
    head_dim: int,
    *,
    stacked: bool,
    dtype: jnp.dtype = jnp.float32,
) -> KVCache:
    """An empty cache (zeros, ``lengths`` 0), constrained to its logical sharding when a mesh is active."""
    shape = (batch, max_len, num_kv_heads, head_dim)
    if stacked:
        k = jnp.zeros((num_layers, *shape), dtype)
        v = jnp.zeros((num_layers, *shape), dtype)
    else:
        k = tuple(jnp.zeros(shape, dtype) for _ in range(num_layers))
        v = tuple(jnp.zeros(shape, dtype) for _ in range(num_layers))
    return constrain_cache(KVCache(k=k, v=v, lengths=jnp.zeros((batch,), jnp.int32)))


def constrain_cache(cache: KVCache) -> KVCache:
    """``with_sharding_constraint`` of every cache array by its logical names (identity without a mesh)."""
    axes = cache.logical_axes()
    return jax.tree.map(constrain, cache, axes, is_leaf=lambda x: isinstance(x, jax.Array))


def cache_shardings(cache: KVCache, mesh: Mesh, rules: Rules) -> KVCache:
    """``NamedSharding``s for placing ``cache`` (e.g. ``jax.device_put(cache, cache_shardings(...))``)."""

    def one(x: jax.Array, names: tuple[str, ...]) -> NamedSharding:
        spec = logical_to_spec(names, rules, mesh.axis_names)
        return NamedSharding(mesh, spec)

    return jax.tree.map(one, cache, cache.logical_axes(), is_leaf=lambda x: isinstance(x, jax.Array))

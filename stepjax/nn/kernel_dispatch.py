"""How layers call ``stepjax.kernels``: impl resolution, and ``shard_map`` wrappers under an active mesh.

Pallas calls are not partitioned by XLA, so under a multi-device mesh (``jax.set_mesh``) a layer calls the
kernel's ``*_sharded`` wrapper, with the mesh axes that the active rules table (``stepjax.sharding.use_rules``)
gives the activations' logical names: batch rows over ``act_batch``'s axes, heads over ``act_heads``'s (or the
cache's ``act_kv_heads``), vocabulary over ``act_vocab``'s. An axis whose size does not divide the dimension is
dropped (that dimension is then replicated inside the wrapper), so any mesh works. Without a mesh, or for the
pure-JAX implementations (which XLA partitions itself), the plain dispatcher is called.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax

from stepjax.kernels import decode_attention, decode_attention_sharded, flash_attention, flash_attention_sharded
from stepjax.sharding import current_rules, logical_to_spec

#: ``Attention(impl=...)`` / ``LLMConfig.attention_impl`` choices (see ``stepjax.nn.attention``).
ATTENTION_IMPLS = ("xla", "reference", "pallas", "auto")


def on_accelerator() -> bool:
    """Whether JAX's default backend is a GPU or TPU (where Pallas kernels compile rather than interpret)."""
    return jax.default_backend() in ("gpu", "cuda", "rocm", "tpu")


def resolve_impl(impl: str) -> str:
    """``"auto"`` -> ``"pallas"`` on GPU/TPU, ``"xla"`` on CPU; other choices are checked and returned."""
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention impl must be one of {ATTENTION_IMPLS}, got {impl!r}")
    if impl == "auto":
        return "pallas" if on_accelerator() else "xla"
    return impl


def kernel_mesh() -> jax.sharding.AbstractMesh | None:
    """The active multi-device mesh (``jax.set_mesh``) if it has axes a ``shard_map`` may split, else None.

    Axes already manual (inside a user's ``shard_map``) cannot be split again; with only those, None.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty or mesh.size == 1:
        return None
    manual = set(getattr(mesh, "manual_axes", ()) or ())
    if all(name in manual or mesh.shape[name] == 1 for name in mesh.axis_names):
        return None
    return mesh


def mesh_axes(mesh: jax.sharding.AbstractMesh, logical: str, sizes: Sequence[int]) -> tuple[str, ...]:
    """Mesh axes the active rules give ``logical``, cut to the longest prefix whose product divides every size."""
    entry = logical_to_spec((logical,), current_rules(), mesh.axis_names)[0]
    axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
    manual = set(getattr(mesh, "manual_axes", ()) or ())
    axes = tuple(a for a in axes if a not in manual)
    while axes and any(size % math.prod(mesh.shape[a] for a in axes) for size in sizes):
        axes = axes[:-1]
    return axes


def kernel_flash_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    positions: jax.Array,
    segment_ids: jax.Array,
    *,
    slopes: jax.Array | None,
    sqrt_alibi: bool,
    impl: str,
) -> jax.Array:
    """Causal, segment-masked self-attention via ``stepjax.kernels.flash_attention`` (``impl`` "reference"/"pallas").

    ``q [b, t, n, h]``, ``k, v [b, t, kv, h]``, ``positions, segment_ids [b, t]`` (per-sample positions, used by
    ALiBi only; the causal order is the slot index, as ``attention_mask``). Returns ``[b, t, n, h]``.
    """
    kwargs = dict(q_segment_ids=segment_ids, kv_segment_ids=segment_ids, causal=True, impl=impl)
    if slopes is not None:
        kwargs.update(alibi_slopes=slopes, alibi_sqrt=sqrt_alibi, q_positions=positions, kv_positions=positions)
    mesh = kernel_mesh() if impl == "pallas" else None
    if mesh is None:
        return flash_attention(q, k, v, **kwargs)
    batch = mesh_axes(mesh, "act_batch", (q.shape[0],))
    heads = mesh_axes(mesh, "act_heads", (q.shape[2], k.shape[2]))
    return flash_attention_sharded(q, k, v, mesh=mesh, batch_axes=batch, head_axis=heads, **kwargs)


def kernel_decode_attention(
    q: jax.Array,
    k_cache: jax.Array,
    v_cache: jax.Array,
    lengths: jax.Array,
    *,
    slopes: jax.Array | None,
    sqrt_alibi: bool,
    scale: float | None,
    impl: str,
) -> jax.Array:
    """One query per row over a KV cache via ``stepjax.kernels.decode_attention``.

    ``q [b, n, h]``, caches ``[b, max_len, kv, h]``, ``lengths [b]`` = valid slots including the query's own key
    (the query sits at position ``lengths - 1``). Returns ``[b, n, h]``.
    """
    kwargs = dict(alibi_slopes=slopes, alibi_sqrt=sqrt_alibi, scale=scale, impl=impl)
    mesh = kernel_mesh() if impl == "pallas" else None
    if mesh is None:
        return decode_attention(q, k_cache, v_cache, lengths, **kwargs)
    batch = mesh_axes(mesh, "act_batch", (q.shape[0],))
    heads = mesh_axes(mesh, "act_kv_heads", (q.shape[1], k_cache.shape[2]))
    return decode_attention_sharded(
        q, k_cache, v_cache, lengths, mesh=mesh, batch_axes=batch, head_axis=heads, **kwargs
    )

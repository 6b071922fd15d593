"""Flash attention: pure-JAX reference, Pallas kernel (forward + backward), dispatcher and ``shard_map`` wrapper.

Semantics (the model's, ``stepjax.nn.attention``): ``q [B, Tq, H, D]``, ``k, v [B, Tk, KV, D]`` with ``H`` a
multiple of ``KV`` (query head ``h`` uses KV head ``h // (H // KV)``); logits ``q.k * scale`` (default
``D ** -0.5``) in float32, plus an optional ALiBi bias ``-slope_h * f(max(q_pos - k_pos, 0))`` where ``f`` is the
identity or, for the Step1 LM's square-root ALiBi (``alibi_sqrt=True``), ``sqrt``. Key ``j`` is visible to query
``i`` iff their segment ids are equal (packed sequences; padding is conventionally segment 0 and so attends only to
padding) and, when ``causal``, ``i >= j`` by slot index in the row (top-left aligned, as ``attention_mask``). Hidden
keys get the finite logit ``-0.7 * f32max``, so a row whose keys are all hidden gets a finite output (the reference
averages every key uniformly there; the kernel averages the keys of the blocks it visits): do not rely on such rows.
ALiBi positions (``q_positions``/``kv_positions``, ``[B, T]`` int32) are the per-sample positions the model passes
(they restart at 0 in each packed sample); they default to the slot index.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from ._common import (
    MASKED,
    accelerator_backend,
    alibi_distance,
    check_divisible,
    next_pow2,
    pad_axis,
    present_axes,
    resolve_impl,
    resolve_interpret,
    round_up,
    spec_entry,
    tile,
)
from ._flash_kernels import FlashStatic, flash_core


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tile sides (powers of two >= 16) along the query and key lengths, for the forward and backward kernels.

    Each is shrunk to the (power-of-two-rounded) length when the input is shorter; lengths that are not whole
    blocks are padded internally. ``default_block_sizes()`` picks per backend: Mosaic TPU needs key-row tiles of
    at least 128 lanes, so TPU uses 128 everywhere; GPUs use smaller backward tiles (fewer registers per program).
    """

    block_q: int = 128
    block_k: int = 128
    block_q_bwd: int = 64
    block_k_bwd: int = 64


def default_block_sizes() -> BlockSizes:
    """128/128 forward and 64/64 backward tiles, or 128 everywhere on TPU."""
    if accelerator_backend() == "tpu":
        return BlockSizes(128, 128, 128, 128)
    return BlockSizes()


def _check_inputs(q, k, v, q_segment_ids, kv_segment_ids, alibi_slopes, q_positions, kv_positions) -> None:
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(
            f"flash_attention: q, k, v must be [batch, len, heads, head_dim], got {q.shape} {k.shape} {v.shape}"
        )
    b, _, h, d = q.shape
    if k.shape != v.shape or k.shape[0] != b or k.shape[3] != d:
        raise ValueError(f"flash_attention: k {k.shape} and v {v.shape} must be [{b}, kv_len, kv_heads, {d}]")
    if h % k.shape[2]:
        raise ValueError(f"flash_attention: num_heads {h} is not a multiple of num_kv_heads {k.shape[2]}")
    if (q_segment_ids is None) != (kv_segment_ids is None):
        raise ValueError("flash_attention: pass both q_segment_ids and kv_segment_ids, or neither")
    for name, x, length in (
        ("q_segment_ids", q_segment_ids, q.shape[1]),
        ("kv_segment_ids", kv_segment_ids, k.shape[1]),
        ("q_positions", q_positions, q.shape[1]),
        ("kv_positions", kv_positions, k.shape[1]),
    ):
        if x is not None and x.shape != (b, length):
            raise ValueError(f"flash_attention: {name} must be [{b}, {length}], got {x.shape}")
    if alibi_slopes is not None and jnp.shape(alibi_slopes) != (h,):
        raise ValueError(f"flash_attention: alibi_slopes must be [num_heads={h}], got {jnp.shape(alibi_slopes)}")


def _positions(positions: jax.Array | None, batch: int, length: int) -> jax.Array:
    if positions is not None:
        return positions.astype(jnp.int32)
    return jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))


def flash_attention_reference(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    q_segment_ids: jax.Array | None = None,
    kv_segment_ids: jax.Array | None = None,
    causal: bool = False,
    alibi_slopes: jax.Array | None = None,
    alibi_sqrt: bool = False,
    q_positions: jax.Array | None = None,
    kv_positions: jax.Array | None = None,
    scale: float | None = None,
) -> jax.Array:
    """Plain ``jnp`` attention with the kernel's signature: materialises ``[B, KV, G, Tq, Tk]`` float32 logits.

    Args:
      q: ``[batch, q_len, num_heads, head_dim]``.
      k, v: ``[batch, kv_len, num_kv_heads, head_dim]``.
      q_segment_ids, kv_segment_ids: ``[batch, q_len]`` / ``[batch, kv_len]`` int32 (both or neither).
      causal: hide keys with a larger slot index than the query's.
      alibi_slopes: ``[num_heads]`` float; adds ``-slope * f(max(q_pos - k_pos, 0))``.
      alibi_sqrt: ``f = sqrt`` (Step1 LM) instead of the identity.
      q_positions, kv_positions: ``[batch, len]`` int32 ALiBi positions (default: slot index).
      scale: logit scale (default ``head_dim ** -0.5``).
    Returns:
      ``[batch, q_len, num_heads, head_dim]`` in ``q.dtype``.
    """
    _check_inputs(q, k, v, q_segment_ids, kv_segment_ids, alibi_slopes, q_positions, kv_positions)
    b, tq, h, d = q.shape
    tk, kvh = k.shape[1], k.shape[2]
    g = h // kvh
    scale = d**-0.5 if scale is None else scale
    qg = q.reshape(b, tq, kvh, g, d)
    logits = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32) * scale
    if alibi_slopes is not None:
        qpos = _positions(q_positions, b, tq)
        kpos = _positions(kv_positions, b, tk)
        distance = alibi_distance(qpos[:, :, None], kpos[:, None, :], sqrt=alibi_sqrt)  # [b, tq, tk]
        slopes = jnp.asarray(alibi_slopes, jnp.float32).reshape(kvh, g)
        logits = logits - slopes[None, :, :, None, None] * distance[:, None, None]
    mask = None
    if q_segment_ids is not None:
        mask = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
    if causal:
        c = jnp.arange(tq)[:, None] >= jnp.arange(tk)[None, :]
        mask = c[None] if mask is None else mask & c[None]
    if mask is not None:
        logits = jnp.where(mask[:, None, None], logits, MASKED)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(b, tq, h, d).astype(q.dtype)


def flash_attention_pallas(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    q_segment_ids: jax.Array | None = None,
    kv_segment_ids: jax.Array | None = None,
    causal: bool = False,
    alibi_slopes: jax.Array | None = None,
    alibi_sqrt: bool = False,
    q_positions: jax.Array | None = None,
    kv_positions: jax.Array | None = None,
    scale: float | None = None,
    block_sizes: BlockSizes | None = None,
    interpret: bool | None = None,
    num_warps: int | None = None,
    num_stages: int = 2,
) -> jax.Array:
    """The Pallas kernel (``custom_vjp``: forward, dq and dk/dv kernels); same arguments and result as the reference.

    The wrapper moves heads before length, pads lengths to whole blocks and ``head_dim`` to a power of two >= 16
    (zeros: they change no dot product), runs the kernels and undoes both. ``interpret=None`` interprets on CPU.
    """
    _check_inputs(q, k, v, q_segment_ids, kv_segment_ids, alibi_slopes, q_positions, kv_positions)
    blocks = block_sizes or default_block_sizes()
    b, tq, h, d = q.shape
    tk = k.shape[1]
    bq = tile(blocks.block_q, tq, name="block_q")
    bq_b = tile(blocks.block_q_bwd, tq, name="block_q_bwd")
    bk = tile(blocks.block_k, tk, name="block_k")
    bk_b = tile(blocks.block_k_bwd, tk, name="block_k_bwd")
    lq, lk = round_up(tq, max(bq, bq_b)), round_up(tk, max(bk, bk_b))
    dp = max(16, next_pow2(d))
    st = FlashStatic(
        scale=float(d**-0.5 if scale is None else scale),
        causal=bool(causal),
        alibi_sqrt=bool(alibi_sqrt),
        kv_len=tk,
        block_q=bq,
        block_k=bk,
        block_q_bwd=bq_b,
        block_k_bwd=bk_b,
        kv_padded=lk != tk,
        interpret=resolve_interpret(interpret),
        num_warps=num_warps or (4 if dp <= 64 else 8),
        num_stages=num_stages,
    )

    def heads_first(x, length):
        return pad_axis(pad_axis(x.transpose(0, 2, 1, 3), 2, length), 3, dp)

    qt, kt, vt = heads_first(q, lq), heads_first(k, lk), heads_first(v, lk)
    qseg = kseg = qpos = kpos = slopes = None
    if q_segment_ids is not None:
        qseg = pad_axis(q_segment_ids.astype(jnp.int32), 1, lq, -1)[:, :, None]
        kseg = pad_axis(kv_segment_ids.astype(jnp.int32), 1, lk, -2)[:, None, :]
    if alibi_slopes is not None:
        qpos = pad_axis(_positions(q_positions, b, tq), 1, lq)[:, :, None]
        kpos = pad_axis(_positions(kv_positions, b, tk), 1, lk)[:, None, :]
        slopes = jnp.asarray(alibi_slopes, jnp.float32).reshape(h, 1, 1)
    out = flash_core(qt, kt, vt, qseg, kseg, qpos, kpos, slopes, st)
    return out[:, :, :tq, :d].transpose(0, 2, 1, 3)


def flash_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    q_segment_ids: jax.Array | None = None,
    kv_segment_ids: jax.Array | None = None,
    causal: bool = False,
    alibi_slopes: jax.Array | None = None,
    alibi_sqrt: bool = False,
    q_positions: jax.Array | None = None,
    kv_positions: jax.Array | None = None,
    scale: float | None = None,
    impl: str = "auto",
    block_sizes: BlockSizes | None = None,
    interpret: bool | None = None,
) -> jax.Array:
    """Dispatcher: ``impl="auto"`` runs the Pallas kernel on GPU/TPU and the reference on CPU; ``"pallas"`` forces
    the kernel (interpreted on CPU), ``"reference"`` the ``jnp`` path. Arguments and result as
    ``flash_attention_reference``; ``block_sizes``/``interpret`` only concern the kernel."""
    kwargs = dict(
        q_segment_ids=q_segment_ids,
        kv_segment_ids=kv_segment_ids,
        causal=causal,
        alibi_slopes=alibi_slopes,
        alibi_sqrt=alibi_sqrt,
        q_positions=q_positions,
        kv_positions=kv_positions,
        scale=scale,
    )
    if resolve_impl(impl, name="flash_attention") == "reference":
        return flash_attention_reference(q, k, v, **kwargs)
    return flash_attention_pallas(q, k, v, block_sizes=block_sizes, interpret=interpret, **kwargs)


def flash_attention_sharded(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mesh: jax.sharding.Mesh,
    batch_axes: tuple[str, ...] = ("data", "fsdp"),
    head_axis: str | None = "tensor",
    q_segment_ids: jax.Array | None = None,
    kv_segment_ids: jax.Array | None = None,
    alibi_slopes: jax.Array | None = None,
    q_positions: jax.Array | None = None,
    kv_positions: jax.Array | None = None,
    **kwargs: Any,
) -> jax.Array:
    """``flash_attention`` under ``jax.shard_map``: batch split over ``batch_axes``, heads over ``head_axis``.

    Pallas calls are not partitioned automatically, so each device runs the kernel on its own shard: batch rows
    ``[B / |batch_axes|]`` and query/KV heads ``[H / |head_axis|]``, ``[KV / |head_axis|]`` (consecutive head
    blocks keep the GQA grouping). Lengths are not split (sequence-parallel attention needs a ring exchange).
    Axes missing from ``mesh`` are ignored. Other keyword arguments go to ``flash_attention``.
    """
    batch = present_axes(mesh, batch_axes)
    heads = present_axes(mesh, head_axis)
    name = "flash_attention_sharded"
    check_divisible(name, "batch", q.shape[0], mesh, batch)
    check_divisible(name, "num_heads", q.shape[2], mesh, heads)
    check_divisible(name, "num_kv_heads", k.shape[2], mesh, heads)
    bspec, hspec = spec_entry(batch), spec_entry(heads)
    operands = dict(q=q, k=k, v=v)
    specs = dict(q=P(bspec, None, hspec, None), k=P(bspec, None, hspec, None), v=P(bspec, None, hspec, None))
    for key, value, spec in (
        ("q_segment_ids", q_segment_ids, P(bspec, None)),
        ("kv_segment_ids", kv_segment_ids, P(bspec, None)),
        ("q_positions", q_positions, P(bspec, None)),
        ("kv_positions", kv_positions, P(bspec, None)),
        ("alibi_slopes", None if alibi_slopes is None else jnp.asarray(alibi_slopes, jnp.float32), P(hspec)),
    ):
        if value is not None:
            operands[key], specs[key] = value, spec

    def local(ops):
        ops = dict(ops)
        return flash_attention(ops.pop("q"), ops.pop("k"), ops.pop("v"), **ops, **kwargs)

    fn = jax.shard_map(local, mesh=mesh, in_specs=(specs,), out_specs=specs["q"], check_vma=False)
    return fn(operands)

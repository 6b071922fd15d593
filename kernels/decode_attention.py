"""Decode attention: one query token per row against a KV cache with per-row lengths (reference, Pallas, sharded).

``q [B, H, D]`` (the new token's queries), ``k_cache, v_cache [B, M, KV, D]`` (the sampler's cache layout, read in
place: the kernel never copies or transposes it when ``D`` is a power of two >= 16 and ``M`` a whole number of
blocks), ``lengths [B]`` int32: row ``b`` attends to cache slots ``0 .. lengths[b] - 1`` (the new token's own key
included, so ``lengths >= 1``; a row of length 0 returns zeros). Optional ALiBi with the query at position
``lengths - 1``: bias ``-slope_h * f(lengths - 1 - j)`` (``f = sqrt`` for the Step1 LM).

The kernel is split-K ("flash decoding"): the grid is ``(B, KV, splits)``; each program owns one KV head's group of
query heads (so one read of a key tile serves the ``H / KV`` heads of the group) and a contiguous range of cache
blocks, stops at the row's length, and writes unnormalised partial results; a short ``jnp`` step merges the splits
with their float32 maxima and sums.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.sharding import PartitionSpec as P

from ._common import (
    EXCLUDED,
    MASKED,
    alibi_distance,
    check_divisible,
    compiler_params,
    dot_nn,
    dot_nt,
    next_pow2,
    pad_axis,
    present_axes,
    resolve_impl,
    resolve_interpret,
    round_up,
    spec_entry,
    tile,
)


def _check(q, k_cache, v_cache, lengths, alibi_slopes) -> None:
    if q.ndim != 3 or k_cache.ndim != 4:
        raise ValueError(
            f"decode_attention: q must be [batch, heads, head_dim] and k_cache [batch, max_len, kv_heads, head_dim], "
            f"got {q.shape} and {k_cache.shape}"
        )
    b, h, d = q.shape
    if k_cache.shape != v_cache.shape or k_cache.shape[0] != b or k_cache.shape[3] != d:
        raise ValueError(
            f"decode_attention: k_cache {k_cache.shape} and v_cache {v_cache.shape} must be [{b}, M, KV, {d}]"
        )
    if h % k_cache.shape[2]:
        raise ValueError(f"decode_attention: num_heads {h} is not a multiple of num_kv_heads {k_cache.shape[2]}")
    if lengths.shape != (b,):
        raise ValueError(f"decode_attention: lengths must be [batch={b}], got {lengths.shape}")
    if alibi_slopes is not None and jnp.shape(alibi_slopes) != (h,):
        raise ValueError(f"decode_attention: alibi_slopes must be [num_heads={h}], got {jnp.shape(alibi_slopes)}")


def decode_attention_reference(
    q: jax.Array,
    k_cache: jax.Array,
    v_cache: jax.Array,
    lengths: jax.Array,
    *,
    alibi_slopes: jax.Array | None = None,
    alibi_sqrt: bool = False,
    scale: float | None = None,
) -> jax.Array:
    """Plain ``jnp`` decode attention.

    Args:
      q: ``[batch, num_heads, head_dim]``.
      k_cache, v_cache: ``[batch, max_len, num_kv_heads, head_dim]``.
      lengths: ``[batch]`` int32 valid cache lengths.
      alibi_slopes: ``[num_heads]``; alibi_sqrt: square-root ALiBi; scale: default ``head_dim ** -0.5``.
    Returns:
      ``[batch, num_heads, head_dim]`` in ``q.dtype``.
    """
    _check(q, k_cache, v_cache, lengths, alibi_slopes)
    b, h, d = q.shape
    m, kvh = k_cache.shape[1], k_cache.shape[2]
    g = h // kvh
    scale = d**-0.5 if scale is None else scale
    qg = q.reshape(b, kvh, g, d)
    logits = jnp.einsum("bkgd,bmkd->bkgm", qg, k_cache, preferred_element_type=jnp.float32) * scale
    slot = jnp.arange(m)[None, :]
    if alibi_slopes is not None:
        distance = alibi_distance((lengths - 1)[:, None], slot, sqrt=alibi_sqrt)  # [b, m]
        slopes = jnp.asarray(alibi_slopes, jnp.float32).reshape(kvh, g)
        logits = logits - slopes[None, :, :, None] * distance[:, None, None, :]
    valid = slot < lengths[:, None]
    logits = jnp.where(valid[:, None, None, :], logits, MASKED)
    probs = jax.nn.softmax(logits, axis=-1).astype(v_cache.dtype)
    out = jnp.einsum("bkgm,bmkd->bkgd", probs, v_cache).reshape(b, h, d)
    return jnp.where((lengths > 0)[:, None, None], out, 0).astype(q.dtype)


def _decode_kernel(*refs, scale: float, sqrt: bool, block_k: int, blocks_per_split: int, has_alibi: bool):
    if has_alibi:
        q_ref, k_ref, v_ref, len_ref, slope_ref, acc_ref, m_ref, l_ref = refs
    else:
        q_ref, k_ref, v_ref, len_ref, acc_ref, m_ref, l_ref = refs
        slope_ref = None
    split = pl.program_id(2)
    length = len_ref[0, 0]
    q = q_ref[...]  # [gp, dp]
    slope = slope_ref[...] if has_alibi else None  # [gp, 1]
    first = split * blocks_per_split
    # Blocks past the row's length are never read: the loop stops at the last block holding a valid slot.
    stop = jnp.minimum(first + blocks_per_split, lax.div(length + block_k - 1, block_k))

    def body(j, carry):
        acc, m, denom = carry
        start = pl.multiple_of(j * block_k, block_k)
        ks = pl.ds(start, block_k)
        k, v = k_ref[ks, :], v_ref[ks, :]
        s = dot_nt(q, k) * scale  # [gp, bk]
        slot = start + lax.broadcasted_iota(jnp.int32, (1, block_k), 1)
        if has_alibi:
            s = s - slope * alibi_distance(length - 1, slot, sqrt=sqrt)
        s = jnp.where(slot < length, s, EXCLUDED)
        m_new = jnp.maximum(m, jnp.max(s, axis=1, keepdims=True))
        alpha = jnp.exp(m - m_new)
        p = jnp.exp(s - m_new)
        denom = alpha * denom + jnp.sum(p, axis=1, keepdims=True)
        acc = alpha * acc + dot_nn(p.astype(v.dtype), v)
        return acc, m_new, denom

    gp, dp = q.shape
    init = (jnp.zeros((gp, dp), jnp.float32), jnp.full((gp, 1), EXCLUDED, jnp.float32), jnp.zeros((gp, 1), jnp.float32))
    acc, m, denom = lax.fori_loop(first, jnp.maximum(first, stop), body, init)
    acc_ref[...] = acc
    m_ref[...] = m
    l_ref[...] = denom


def decode_attention_pallas(
    q: jax.Array,
    k_cache: jax.Array,
    v_cache: jax.Array,
    lengths: jax.Array,
    *,
    alibi_slopes: jax.Array | None = None,
    alibi_sqrt: bool = False,
    scale: float | None = None,
    block_k: int = 128,
    num_splits: int | None = None,
    interpret: bool | None = None,
) -> jax.Array:
    """Split-K Pallas decode attention; arguments and result as ``decode_attention_reference``.

    ``block_k``: cache tile (a power of two >= 16); ``num_splits``: cache ranges processed in parallel per
    (row, KV head), default enough programs to fill ~128 streaming multiprocessors.
    """
    _check(q, k_cache, v_cache, lengths, alibi_slopes)
    b, h, d = q.shape
    m, kvh = k_cache.shape[1], k_cache.shape[2]
    g = h // kvh
    gp, dp = max(16, next_pow2(g)), max(16, next_pow2(d))
    bk = tile(block_k, m, name="block_k")
    mp = round_up(m, bk)
    n_blocks = mp // bk
    if num_splits is None:
        num_splits = max(1, min(n_blocks, 128 // max(1, b * kvh)))
    bps = -(-n_blocks // num_splits)
    splits = -(-n_blocks // bps)
    interpret = resolve_interpret(interpret)

    qg = pad_axis(pad_axis(q.reshape(b, kvh, g, d), 2, gp), 3, dp)
    # [B, M, KV, D] -> [B, M, KV * D] is free; a KV head's tile is then block (M, D) at column block kv.
    # Only a head_dim that is not a power of two >= 16, or a length that is not whole blocks, costs a padded copy.
    kc = pad_axis(pad_axis(k_cache, 3, dp), 1, mp).reshape(b, mp, kvh * dp)
    vc = pad_axis(pad_axis(v_cache, 3, dp), 1, mp).reshape(b, mp, kvh * dp)
    lens = lengths.astype(jnp.int32).reshape(b, 1, 1)
    operands = [qg, kc, vc, lens]
    in_specs = [
        pl.BlockSpec((None, None, gp, dp), lambda bi, ki, si: (bi, ki, 0, 0)),
        pl.BlockSpec((None, mp, dp), lambda bi, ki, si: (bi, 0, ki)),
        pl.BlockSpec((None, mp, dp), lambda bi, ki, si: (bi, 0, ki)),
        pl.BlockSpec((None, 1, 1), lambda bi, ki, si: (bi, 0, 0)),
    ]
    if alibi_slopes is not None:
        slopes = pad_axis(jnp.asarray(alibi_slopes, jnp.float32).reshape(kvh, g), 1, gp)[:, :, None]
        operands.append(slopes)
        in_specs.append(pl.BlockSpec((None, gp, 1), lambda bi, ki, si: (ki, 0, 0)))
    part = (b, kvh, splits, gp)
    acc, mx, denom = pl.pallas_call(
        functools.partial(
            _decode_kernel,
            scale=float(d**-0.5 if scale is None else scale),
            sqrt=bool(alibi_sqrt),
            block_k=bk,
            blocks_per_split=bps,
            has_alibi=alibi_slopes is not None,
        ),
        grid=(b, kvh, splits),
        in_specs=in_specs,
        out_specs=[
            pl.BlockSpec((None, None, None, gp, dp), lambda bi, ki, si: (bi, ki, si, 0, 0)),
            pl.BlockSpec((None, None, None, gp, 1), lambda bi, ki, si: (bi, ki, si, 0, 0)),
            pl.BlockSpec((None, None, None, gp, 1), lambda bi, ki, si: (bi, ki, si, 0, 0)),
        ],
        out_shape=[
            jax.ShapeDtypeStruct((*part, dp), jnp.float32),
            jax.ShapeDtypeStruct((*part, 1), jnp.float32),
            jax.ShapeDtypeStruct((*part, 1), jnp.float32),
        ],
        compiler_params=compiler_params(3, interpret=interpret),
        interpret=interpret,
        name="stepjax_decode_attention",
    )(*operands)
    # Merge the splits: rescale each partial sum to the global maximum (empty splits have l = 0, weight 0).
    top = jnp.max(mx, axis=2, keepdims=True)
    w = jnp.exp(mx - top)
    num = jnp.sum(w * acc, axis=2)
    den = jnp.sum(w * denom, axis=2)
    out = jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)
    return out[:, :, :g, :d].reshape(b, h, d).astype(q.dtype)


def decode_attention(
    q: jax.Array,
    k_cache: jax.Array,
    v_cache: jax.Array,
    lengths: jax.Array,
    *,
    alibi_slopes: jax.Array | None = None,
    alibi_sqrt: bool = False,
    scale: float | None = None,
    impl: str = "auto",
    block_k: int = 128,
    num_splits: int | None = None,
    interpret: bool | None = None,
) -> jax.Array:
    """Dispatcher (``"auto"``: Pallas on GPU/TPU, reference on CPU; ``"pallas"`` interprets on CPU)."""
    kwargs = dict(alibi_slopes=alibi_slopes, alibi_sqrt=alibi_sqrt, scale=scale)
    if resolve_impl(impl, name="decode_attention") == "reference":
        return decode_attention_reference(q, k_cache, v_cache, lengths, **kwargs)
    return decode_attention_pallas(
        q, k_cache, v_cache, lengths, block_k=block_k, num_splits=num_splits, interpret=interpret, **kwargs
    )


def decode_attention_sharded(
    q: jax.Array,
    k_cache: jax.Array,
    v_cache: jax.Array,
    lengths: jax.Array,
    *,
    mesh: jax.sharding.Mesh,
    batch_axes: tuple[str, ...] = ("data", "fsdp"),
    head_axis: str | None = "tensor",
    alibi_slopes: jax.Array | None = None,
    **kwargs,
) -> jax.Array:
    """``decode_attention`` under ``jax.shard_map``: rows over ``batch_axes``, query and KV heads over ``head_axis``
    (the cache sharded like the sampler's ``[batch, len, kv_heads, head_dim]`` cache); axes missing from ``mesh``
    are ignored. Other keyword arguments go to ``decode_attention``."""
    batch, heads = present_axes(mesh, batch_axes), present_axes(mesh, head_axis)
    name = "decode_attention_sharded"
    check_divisible(name, "batch", q.shape[0], mesh, batch)
    check_divisible(name, "num_heads", q.shape[1], mesh, heads)
    check_divisible(name, "num_kv_heads", k_cache.shape[2], mesh, heads)
    bspec, hspec = spec_entry(batch), spec_entry(heads)
    cache_spec = P(bspec, None, hspec, None)
    operands = [q, k_cache, v_cache, lengths]
    specs = [P(bspec, hspec, None), cache_spec, cache_spec, P(bspec)]
    if alibi_slopes is not None:
        operands.append(jnp.asarray(alibi_slopes, jnp.float32))
        specs.append(P(hspec))

    def local(q, k, v, lens, *slopes):
        return decode_attention(q, k, v, lens, alibi_slopes=slopes[0] if slopes else None, **kwargs)

    fn = jax.shard_map(local, mesh=mesh, in_specs=tuple(specs), out_specs=specs[0], check_vma=False)
    return fn(*operands)

"""Pallas flash-attention kernels (forward, dq, dk/dv) and their ``custom_vjp``, on the internal layout.

Internal layout (prepared by ``kernels.flash_attention.flash_attention_pallas``): heads before length,
``q [B, H, Lq, D]``, ``k, v [B, KV, Lk, D]`` with ``Lq``/``Lk`` padded to whole blocks and ``D`` padded to a power of
two >= 16; segment ids and positions as columns ``[B, Lq, 1]`` for queries and rows ``[B, 1, Lk]`` for keys (so the
kernel compares a ``[bq, 1]`` column with a ``[1, bk]`` row); ALiBi slopes ``[H, 1, 1]``. Softmax statistics are
float32; the forward pass saves the per-row logsumexp ``lse [B, H, Lq, 1]``, from which the backward kernels
recompute the probabilities blockwise (FlashAttention-2): ``dq`` with a grid over query blocks, ``dk, dv`` with a
grid over key blocks of each KV head that loops over the query heads of its group, so that grouped KV heads are
never repeated in memory and their gradients need no extra reduction.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from ._common import EXCLUDED, MASKED, alibi_distance, compiler_params, dot_nn, dot_nt, dot_tn


@dataclasses.dataclass(frozen=True)
class FlashStatic:
    """Static configuration of one flash-attention call (hashable: it is a ``nondiff_argnum``)."""

    scale: float
    causal: bool
    alibi_sqrt: bool
    kv_len: int  # true key length (before padding)
    block_q: int
    block_k: int
    block_q_bwd: int
    block_k_bwd: int
    kv_padded: bool  # whether k/v carry padded slots past kv_len
    interpret: bool
    num_warps: int = 4
    num_stages: int = 2


def _iota(shape: tuple[int, int], axis: int) -> jax.Array:
    return lax.broadcasted_iota(jnp.int32, shape, axis)


def _logits(q, k, q_start, k_start, qseg, kseg, qpos, kpos, slope, st: FlashStatic):
    """Scaled, biased, masked float32 logits ``[bq, bk]`` of one tile and the mask of entries that carry gradient.

    ``qseg``/``qpos`` are ``[bq, 1]`` columns, ``kseg``/``kpos`` ``[1, bk]`` rows, ``slope`` ``[1, 1]`` (or None).
    """
    bq, bk = q.shape[0], k.shape[0]
    s = dot_nt(q, k) * st.scale
    if slope is not None:
        s = s - slope * alibi_distance(qpos, kpos, sqrt=st.alibi_sqrt)
    q_idx = q_start + _iota((bq, 1), 0)
    k_idx = k_start + _iota((1, bk), 1)
    keep = None
    if qseg is not None:
        keep = qseg == kseg
    if st.causal:
        causal = q_idx >= k_idx
        keep = causal if keep is None else keep & causal
    if keep is not None:
        s = jnp.where(keep, s, MASKED)
    if st.kv_padded:
        # Slots past kv_len exist only because of padding: probability exactly 0 and no gradient.
        valid = k_idx < st.kv_len
        s = jnp.where(valid, s, EXCLUDED)
        keep = valid if keep is None else keep & valid
    return s, keep


def _unpack(refs, has_seg: bool, has_alibi: bool, n_lead: int):
    it = iter(refs)
    lead = [next(it) for _ in range(n_lead)]
    seg = (next(it), next(it)) if has_seg else (None, None)
    alibi = (next(it), next(it), next(it)) if has_alibi else (None, None, None)
    return lead, seg, alibi, list(it)


def _num_kv_blocks(st: FlashStatic, q_block_index, block_q: int, block_k: int, total: int):
    """Key blocks a query block needs: all of them, or (causal) those up to the diagonal."""
    if not st.causal:
        return total
    return jnp.minimum(total, lax.div((q_block_index + 1) * block_q + block_k - 1, block_k))


# ------------------------------------------------------------------------------------------------ forward


def _fwd_kernel(*refs, st: FlashStatic, has_seg: bool, has_alibi: bool):
    (q_ref, k_ref, v_ref), (qseg_ref, kseg_ref), (qpos_ref, kpos_ref, slope_ref), (o_ref, lse_ref) = _unpack(
        refs, has_seg, has_alibi, 3
    )
    bq, bk = st.block_q, st.block_k
    qi = pl.program_id(2)
    q = q_ref[...]
    qseg = qseg_ref[...] if has_seg else None
    qpos = qpos_ref[...] if has_alibi else None
    slope = slope_ref[...] if has_alibi else None

    def body(j, carry):
        acc, m, denom = carry
        start = pl.multiple_of(j * bk, bk)
        ks = pl.ds(start, bk)
        k, v = k_ref[ks, :], v_ref[ks, :]
        kseg = kseg_ref[:, ks] if has_seg else None
        kpos = kpos_ref[:, ks] if has_alibi else None
        s, _ = _logits(q, k, qi * bq, start, qseg, kseg, qpos, kpos, slope, st)
        m_new = jnp.maximum(m, jnp.max(s, axis=1, keepdims=True))
        alpha = jnp.exp(m - m_new)
        p = jnp.exp(s - m_new)
        denom = alpha * denom + jnp.sum(p, axis=1, keepdims=True)
        acc = alpha * acc + dot_nn(p.astype(v.dtype), v)
        return acc, m_new, denom

    n_blocks = _num_kv_blocks(st, qi, bq, bk, k_ref.shape[0] // bk)
    init = (
        jnp.zeros((bq, q.shape[1]), jnp.float32),
        jnp.full((bq, 1), EXCLUDED, jnp.float32),
        jnp.zeros((bq, 1), jnp.float32),
    )
    acc, m, denom = lax.fori_loop(0, n_blocks, body, init)
    # denom >= 1: the row maximum (a real or masked key, never a padded slot) contributes exp(0).
    o_ref[...] = (acc / denom).astype(o_ref.dtype)
    lse_ref[...] = m + jnp.log(denom)


def _side_specs(has_seg, has_alibi, q_block, k_block, q_map, k_map, slope_block, slope_map):
    specs = []
    if has_seg:
        specs += [pl.BlockSpec(q_block, q_map), pl.BlockSpec(k_block, k_map)]
    if has_alibi:
        specs += [pl.BlockSpec(q_block, q_map), pl.BlockSpec(k_block, k_map), pl.BlockSpec(slope_block, slope_map)]
    return specs


def _q_tile_side(bq: int, lk: int):
    """Blocks and maps of segment ids / positions / slopes for a (batch, head, query-block) grid."""
    return (
        (None, bq, 1),
        (None, 1, lk),
        lambda bi, hi, qi: (bi, qi, 0),
        lambda bi, hi, qi: (bi, 0, 0),
        (None, 1, 1),
        lambda bi, hi, qi: (hi, 0, 0),
    )


def _kv_tile_side(lq: int, bk: int, group: int):
    """The same for a (batch, KV head, key-block) grid: all query rows, one key tile, the group's slopes."""
    return (
        (None, lq, 1),
        (None, 1, bk),
        lambda bi, ki, kj: (bi, 0, 0),
        lambda bi, ki, kj: (bi, 0, kj),
        (group, 1, 1),
        lambda bi, ki, kj: (ki, 0, 0),
    )


def _side_operands(qseg, kseg, qpos, kpos, slopes):
    ops = []
    if qseg is not None:
        ops += [qseg, kseg]
    if slopes is not None:
        ops += [qpos, kpos, slopes]
    return ops


def flash_forward(q, k, v, qseg, kseg, qpos, kpos, slopes, st: FlashStatic):
    """Forward kernel: ``o [B, H, Lq, D]`` (``q.dtype``) and ``lse [B, H, Lq, 1]`` (float32)."""
    b, h, lq, d = q.shape
    kvh, lk = k.shape[1], k.shape[2]
    g = h // kvh
    bq = st.block_q
    has_seg, has_alibi = qseg is not None, slopes is not None
    in_specs = [
        pl.BlockSpec((None, None, bq, d), lambda bi, hi, qi: (bi, hi, qi, 0)),
        pl.BlockSpec((None, None, lk, d), lambda bi, hi, qi: (bi, hi // g, 0, 0)),
        pl.BlockSpec((None, None, lk, d), lambda bi, hi, qi: (bi, hi // g, 0, 0)),
        *_side_specs(has_seg, has_alibi, *_q_tile_side(bq, lk)),
    ]
    out_specs = [
        pl.BlockSpec((None, None, bq, d), lambda bi, hi, qi: (bi, hi, qi, 0)),
        pl.BlockSpec((None, None, bq, 1), lambda bi, hi, qi: (bi, hi, qi, 0)),
    ]
    return pl.pallas_call(
        functools.partial(_fwd_kernel, st=st, has_seg=has_seg, has_alibi=has_alibi),
        grid=(b, h, lq // bq),
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((b, h, lq, 1), jnp.float32)],
        compiler_params=compiler_params(3, num_warps=st.num_warps, num_stages=st.num_stages, interpret=st.interpret),
        interpret=st.interpret,
        name="stepjax_flash_fwd",
    )(q, k, v, *_side_operands(qseg, kseg, qpos, kpos, slopes))


# ----------------------------------------------------------------------------------------------- backward


def _dq_kernel(*refs, st: FlashStatic, has_seg: bool, has_alibi: bool):
    (
        (q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref),
        (qseg_ref, kseg_ref),
        (qpos_ref, kpos_ref, slope_ref),
        (dq_ref,),
    ) = _unpack(refs, has_seg, has_alibi, 6)
    bq, bk = st.block_q_bwd, st.block_k_bwd
    qi = pl.program_id(2)
    q, do, lse, delta = q_ref[...], do_ref[...], lse_ref[...], delta_ref[...]
    qseg = qseg_ref[...] if has_seg else None
    qpos = qpos_ref[...] if has_alibi else None
    slope = slope_ref[...] if has_alibi else None

    def body(j, dq):
        start = pl.multiple_of(j * bk, bk)
        ks = pl.ds(start, bk)
        k, v = k_ref[ks, :], v_ref[ks, :]
        kseg = kseg_ref[:, ks] if has_seg else None
        kpos = kpos_ref[:, ks] if has_alibi else None
        s, keep = _logits(q, k, qi * bq, start, qseg, kseg, qpos, kpos, slope, st)
        p = jnp.exp(s - lse)
        ds = p * (dot_nt(do, v) - delta)
        # A masked logit is a constant: no gradient, even in a row where every key is masked (p = 1/n there).
        if keep is not None:
            ds = jnp.where(keep, ds, 0.0)
        return dq + dot_nn(ds.astype(k.dtype), k)

    n_blocks = _num_kv_blocks(st, qi, bq, bk, k_ref.shape[0] // bk)
    dq = lax.fori_loop(0, n_blocks, body, jnp.zeros(q.shape, jnp.float32))
    dq_ref[...] = (dq * st.scale).astype(dq_ref.dtype)


def _dkv_kernel(*refs, st: FlashStatic, has_seg: bool, has_alibi: bool, group: int):
    (
        (q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref),
        (qseg_ref, kseg_ref),
        (qpos_ref, kpos_ref, slope_ref),
        (
            dk_ref,
            dv_ref,
        ),
    ) = _unpack(refs, has_seg, has_alibi, 6)
    bq, bk = st.block_q_bwd, st.block_k_bwd
    ki = pl.program_id(2)
    k_start = ki * bk
    k, v = k_ref[...], v_ref[...]
    kseg = kseg_ref[...] if has_seg else None
    kpos = kpos_ref[...] if has_alibi else None
    n_q_blocks = q_ref.shape[1] // bq
    # Causal: query blocks that end before this key block starts see none of it.
    first = lax.div(k_start, bq) if st.causal else 0

    def head_body(hg, carry):
        slope = slope_ref[hg] if has_alibi else None

        def q_body(i, carry):
            dk, dv = carry
            start = pl.multiple_of(i * bq, bq)
            qs = pl.ds(start, bq)
            q, do = q_ref[hg, qs, :], do_ref[hg, qs, :]
            lse, delta = lse_ref[hg, qs, :], delta_ref[hg, qs, :]
            qseg = qseg_ref[qs, :] if has_seg else None
            qpos = qpos_ref[qs, :] if has_alibi else None
            s, keep = _logits(q, k, start, k_start, qseg, kseg, qpos, kpos, slope, st)
            p = jnp.exp(s - lse)
            dv = dv + dot_tn(p.astype(do.dtype), do)
            ds = p * (dot_nt(do, v) - delta)
            if keep is not None:
                ds = jnp.where(keep, ds, 0.0)
            dk = dk + dot_tn(ds.astype(q.dtype), q)
            return dk, dv

        return lax.fori_loop(first, n_q_blocks, q_body, carry)

    zeros = jnp.zeros(k.shape, jnp.float32)
    dk, dv = lax.fori_loop(0, group, head_body, (zeros, zeros))
    dk_ref[...] = (dk * st.scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def flash_backward(q, k, v, qseg, kseg, qpos, kpos, slopes, o, lse, do, st: FlashStatic):
    """Backward kernels: ``dq`` (grid over query blocks) and ``dk, dv`` (grid over key blocks per KV head)."""
    b, h, lq, d = q.shape
    kvh, lk = k.shape[1], k.shape[2]
    g = h // kvh
    bq, bk = st.block_q_bwd, st.block_k_bwd
    has_seg, has_alibi = qseg is not None, slopes is not None
    side = _side_operands(qseg, kseg, qpos, kpos, slopes)
    # delta_i = rowsum(dO_i * O_i): a cheap elementwise reduction, left to XLA to fuse.
    delta = jnp.sum(o.astype(jnp.float32) * do.astype(jnp.float32), axis=-1, keepdims=True)
    params = compiler_params(3, num_warps=st.num_warps, num_stages=st.num_stages, interpret=st.interpret)

    q_tile = pl.BlockSpec((None, None, bq, d), lambda bi, hi, qi: (bi, hi, qi, 0))
    row_tile = pl.BlockSpec((None, None, bq, 1), lambda bi, hi, qi: (bi, hi, qi, 0))
    kv_full = pl.BlockSpec((None, None, lk, d), lambda bi, hi, qi: (bi, hi // g, 0, 0))
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, st=st, has_seg=has_seg, has_alibi=has_alibi),
        grid=(b, h, lq // bq),
        in_specs=[
            q_tile,
            kv_full,
            kv_full,
            q_tile,
            row_tile,
            row_tile,
            *_side_specs(has_seg, has_alibi, *_q_tile_side(bq, lk)),
        ],
        out_specs=q_tile,
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        compiler_params=params,
        interpret=st.interpret,
        name="stepjax_flash_dq",
    )(q, k, v, do, lse, delta, *side)

    q_group = pl.BlockSpec((None, g, lq, d), lambda bi, ki, kj: (bi, ki, 0, 0))
    row_group = pl.BlockSpec((None, g, lq, 1), lambda bi, ki, kj: (bi, ki, 0, 0))
    kv_tile = pl.BlockSpec((None, None, bk, d), lambda bi, ki, kj: (bi, ki, kj, 0))
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, st=st, has_seg=has_seg, has_alibi=has_alibi, group=g),
        grid=(b, kvh, lk // bk),
        in_specs=[
            q_group,
            kv_tile,
            kv_tile,
            q_group,
            row_group,
            row_group,
            *_side_specs(has_seg, has_alibi, *_kv_tile_side(lq, bk, g)),
        ],
        out_specs=[kv_tile, kv_tile],
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        compiler_params=params,
        interpret=st.interpret,
        name="stepjax_flash_dkv",
    )(q, k, v, do, lse, delta, *side)
    return dq, dk, dv


# ---------------------------------------------------------------------------------------------- custom_vjp


@functools.partial(jax.custom_vjp, nondiff_argnums=(8,))
def flash_core(q, k, v, qseg, kseg, qpos, kpos, slopes, st: FlashStatic):
    """Differentiable flash attention on the internal layout; returns ``o [B, H, Lq, D]``.

    Gradients flow to ``q, k, v``; segment ids and positions are integers, and ALiBi slopes are treated as
    constants (zero cotangent).
    """
    return flash_forward(q, k, v, qseg, kseg, qpos, kpos, slopes, st)[0]


def _core_fwd(q, k, v, qseg, kseg, qpos, kpos, slopes, st):
    o, lse = flash_forward(q, k, v, qseg, kseg, qpos, kpos, slopes, st)
    return o, (q, k, v, qseg, kseg, qpos, kpos, slopes, o, lse)


def _core_bwd(st, residuals, do):
    q, k, v, qseg, kseg, qpos, kpos, slopes, o, lse = residuals
    dq, dk, dv = flash_backward(q, k, v, qseg, kseg, qpos, kpos, slopes, o, lse, do, st)
    dslopes = None if slopes is None else jnp.zeros_like(slopes)
    return dq, dk, dv, None, None, None, None, dslopes


flash_core.defvjp(_core_fwd, _core_bwd)

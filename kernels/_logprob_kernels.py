"""Pallas kernels of the fused log-prob (forward, d hidden, d weight) and their ``custom_vjp``.

Internal layout (prepared by ``kernels.fused_logprob.fused_logprob_pallas``): ``hidden [Np, dp]``, ``weight
[dp, Vp]`` padded to whole tiles (zeros), ``targets [Np, 1]`` int32, per-token statistics as ``[Np, 1]`` float32
columns. No kernel ever holds more than one ``[block_n, block_v]`` tile of logits: each tile is recomputed from
``hidden`` and ``weight`` by a loop over ``block_d`` slices of the model dimension.

* forward, grid over token blocks: loop over vocabulary tiles with an online logsumexp and the target's logit;
* d hidden, grid over token blocks: recompute each logit tile, form ``d logits``, accumulate ``d logits @ W^T``
  into the block's own rows of the float32 output (read-modify-write: each program owns its rows, no atomics);
* d weight, grid over vocabulary tiles: the same per token block, accumulating ``h^T @ d logits`` into the tile's
  own columns. The logits are thus computed three times (forward + two backward kernels) instead of once; that is
  the price of never writing them out without atomics (which Pallas does not offer portably).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from ._common import EXCLUDED, compiler_params, dot_nn, dot_nt, dot_tn


@dataclasses.dataclass(frozen=True)
class LogprobStatic:
    """Static configuration of one fused log-prob call."""

    vocab: int  # true vocabulary size (columns past it are padding)
    block_n: int
    block_v: int
    block_d: int
    temperature: float
    soft_cap: float | None
    interpret: bool


def transform(z_raw: jax.Array, temperature: float, soft_cap: float | None) -> jax.Array:
    """Logits as scored: ``soft_cap * tanh(z / soft_cap)`` when capped, then divided by ``temperature``."""
    z = z_raw
    if soft_cap is not None:
        z = soft_cap * jnp.tanh(z / soft_cap)
    return z if temperature == 1.0 else z / temperature


def transform_grad(z_raw: jax.Array, dz: jax.Array, temperature: float, soft_cap: float | None) -> jax.Array:
    """Cotangent of the raw logits from that of the transformed ones."""
    if temperature != 1.0:
        dz = dz / temperature
    if soft_cap is not None:
        t = jnp.tanh(z_raw / soft_cap)
        dz = dz * (1.0 - t * t)
    return dz


def logit_grad(z, cols, targets, lse, g_lp, g_lse):
    """``d/dz`` of ``g_lp * (z[t] - lse) + g_lse * lse``: ``g_lp * onehot(t) + (g_lse - g_lp) * softmax(z)``."""
    p = jnp.exp(z - lse)
    return (g_lse - g_lp) * p + jnp.where(cols == targets, g_lp, 0.0)


def _tile_logits(h_ref, rows, w_ref, cols, st: LogprobStatic, shape):
    """Raw float32 logits ``hidden[rows] @ weight[:, cols]`` by a loop over ``block_d`` slices of the model dim."""
    bd = st.block_d

    def body(kd, acc):
        ds = pl.ds(pl.multiple_of(kd * bd, bd), bd)
        return acc + dot_nn(h_ref[rows, ds], w_ref[ds, cols])

    return lax.fori_loop(0, h_ref.shape[1] // bd, body, jnp.zeros(shape, jnp.float32))


def _scored(z_raw, cols, st: LogprobStatic):
    z = transform(z_raw, st.temperature, st.soft_cap)
    if st.vocab % st.block_v:
        z = jnp.where(cols < st.vocab, z, EXCLUDED)  # padded vocabulary columns: probability 0
    return z


def _fwd_kernel(h_ref, w_ref, t_ref, lp_ref, lse_ref, *, st: LogprobStatic):
    bn, bv = st.block_n, st.block_v
    t = t_ref[...]

    def body(c, carry):
        m, s, tgt = carry
        start = pl.multiple_of(c * bv, bv)
        cs = pl.ds(start, bv)
        cols = start + lax.broadcasted_iota(jnp.int32, (1, bv), 1)
        z = _scored(_tile_logits(h_ref, slice(None), w_ref, cs, st, (bn, bv)), cols, st)
        m_new = jnp.maximum(m, jnp.max(z, axis=1, keepdims=True))
        s = s * jnp.exp(m - m_new) + jnp.sum(jnp.exp(z - m_new), axis=1, keepdims=True)
        tgt = tgt + jnp.sum(jnp.where(cols == t, z, 0.0), axis=1, keepdims=True)
        return m_new, s, tgt

    init = (jnp.full((bn, 1), EXCLUDED, jnp.float32), jnp.zeros((bn, 1), jnp.float32), jnp.zeros((bn, 1), jnp.float32))
    m, s, tgt = lax.fori_loop(0, w_ref.shape[1] // bv, body, init)
    lse = m + jnp.log(s)
    lp_ref[...] = tgt - lse
    lse_ref[...] = lse


def _dh_kernel(h_ref, w_ref, t_ref, lse_ref, glp_ref, glse_ref, dh_ref, *, st: LogprobStatic):
    bn, bv, bd = st.block_n, st.block_v, st.block_d
    n_d = h_ref.shape[1] // bd
    t, lse, g_lp, g_lse = t_ref[...], lse_ref[...], glp_ref[...], glse_ref[...]

    def zero(kd, _):
        dh_ref[:, pl.ds(pl.multiple_of(kd * bd, bd), bd)] = jnp.zeros((bn, bd), dh_ref.dtype)

    lax.fori_loop(0, n_d, zero, None)

    def body(c, _):
        start = pl.multiple_of(c * bv, bv)
        cs = pl.ds(start, bv)
        cols = start + lax.broadcasted_iota(jnp.int32, (1, bv), 1)
        z_raw = _tile_logits(h_ref, slice(None), w_ref, cs, st, (bn, bv))
        dz = logit_grad(_scored(z_raw, cols, st), cols, t, lse, g_lp, g_lse)
        dz = transform_grad(z_raw, dz, st.temperature, st.soft_cap).astype(w_ref.dtype)

        def acc(kd, _):
            ds = pl.ds(pl.multiple_of(kd * bd, bd), bd)
            dh_ref[:, ds] = dh_ref[:, ds] + dot_nt(dz, w_ref[ds, cs])

        lax.fori_loop(0, n_d, acc, None)

    lax.fori_loop(0, w_ref.shape[1] // bv, body, None)


def _dw_kernel(h_ref, w_ref, t_ref, lse_ref, glp_ref, glse_ref, dw_ref, *, st: LogprobStatic):
    bn, bv, bd = st.block_n, st.block_v, st.block_d
    n_d = h_ref.shape[1] // bd
    start = pl.program_id(0) * bv
    cols = start + lax.broadcasted_iota(jnp.int32, (1, bv), 1)

    def zero(kd, _):
        dw_ref[pl.ds(pl.multiple_of(kd * bd, bd), bd), :] = jnp.zeros((bd, bv), dw_ref.dtype)

    lax.fori_loop(0, n_d, zero, None)

    def body(n, _):
        rows = pl.ds(pl.multiple_of(n * bn, bn), bn)
        z_raw = _tile_logits(h_ref, rows, w_ref, slice(None), st, (bn, bv))
        dz = logit_grad(
            _scored(z_raw, cols, st), cols, t_ref[rows, :], lse_ref[rows, :], glp_ref[rows, :], glse_ref[rows, :]
        )
        dz = transform_grad(z_raw, dz, st.temperature, st.soft_cap).astype(h_ref.dtype)

        def acc(kd, _):
            ds = pl.ds(pl.multiple_of(kd * bd, bd), bd)
            dw_ref[ds, :] = dw_ref[ds, :] + dot_tn(h_ref[rows, ds], dz)

        lax.fori_loop(0, n_d, acc, None)

    lax.fori_loop(0, h_ref.shape[0] // bn, body, None)


def _call(kernel, grid, in_specs, out_specs, out_shape, st: LogprobStatic, name: str):
    return pl.pallas_call(
        functools.partial(kernel, st=st),
        grid=grid,
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=out_shape,
        compiler_params=compiler_params(len(grid), interpret=st.interpret),
        interpret=st.interpret,
        name=name,
    )


def logprob_forward(hidden, weight, targets, st: LogprobStatic):
    """``logp, lse`` as ``[Np, 1]`` float32."""
    n, d = hidden.shape
    bn = st.block_n
    col = pl.BlockSpec((bn, 1), lambda i: (i, 0))
    return _call(
        _fwd_kernel,
        (n // bn,),
        [pl.BlockSpec((bn, d), lambda i: (i, 0)), pl.BlockSpec(weight.shape, lambda i: (0, 0)), col],
        [col, col],
        [jax.ShapeDtypeStruct((n, 1), jnp.float32)] * 2,
        st,
        "stepjax_logprob_fwd",
    )(hidden, weight, targets)


def logprob_backward(hidden, weight, targets, lse, g_lp, g_lse, st: LogprobStatic):
    """``d hidden [Np, dp]`` and ``d weight [dp, Vp]`` (float32 accumulators, cast by the caller)."""
    n, d = hidden.shape
    v = weight.shape[1]
    bn, bv = st.block_n, st.block_v
    col = pl.BlockSpec((bn, 1), lambda i: (i, 0))
    dh = _call(
        _dh_kernel,
        (n // bn,),
        [pl.BlockSpec((bn, d), lambda i: (i, 0)), pl.BlockSpec(weight.shape, lambda i: (0, 0))] + [col] * 4,
        pl.BlockSpec((bn, d), lambda i: (i, 0)),
        jax.ShapeDtypeStruct((n, d), jnp.float32),
        st,
        "stepjax_logprob_dh",
    )(hidden, weight, targets, lse, g_lp, g_lse)
    full_col = pl.BlockSpec((n, 1), lambda j: (0, 0))
    dw = _call(
        _dw_kernel,
        (v // bv,),
        [pl.BlockSpec((n, d), lambda j: (0, 0)), pl.BlockSpec((d, bv), lambda j: (0, j))] + [full_col] * 4,
        pl.BlockSpec((d, bv), lambda j: (0, j)),
        jax.ShapeDtypeStruct((d, v), jnp.float32),
        st,
        "stepjax_logprob_dw",
    )(hidden, weight, targets, lse, g_lp, g_lse)
    return dh, dw


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def logprob_core(hidden, weight, targets, st: LogprobStatic):
    """Differentiable ``(logp, lse)`` (``[Np, 1]`` float32 each) on the padded layout."""
    lp, lse = logprob_forward(hidden, weight, targets, st)
    return lp, lse


def _core_fwd(hidden, weight, targets, st):
    lp, lse = logprob_forward(hidden, weight, targets, st)
    return (lp, lse), (hidden, weight, targets, lse)


def _core_bwd(st, residuals, cotangents):
    hidden, weight, targets, lse = residuals
    g_lp, g_lse = (jnp.asarray(c, jnp.float32) for c in cotangents)
    dh, dw = logprob_backward(hidden, weight, targets, lse, g_lp, g_lse, st)
    return dh.astype(hidden.dtype), dw.astype(weight.dtype), None


logprob_core.defvjp(_core_fwd, _core_bwd)

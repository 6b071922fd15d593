"""Fused log-prob / cross-entropy over the vocabulary in chunks, never materialising ``[tokens, vocab]`` logits.

``logp[n] = log_softmax(score(hidden[n] @ weight))[targets[n]]`` and ``lse[n] = logsumexp(score(...))`` in float32,
where ``score(z) = soft_cap * tanh(z / soft_cap) / temperature`` (cap optional; temperature-scaled log-probs are
what RL objectives need; ``lse`` feeds a z-loss). Cross-entropy is ``-logp``. Gradients flow to ``hidden`` and
``weight`` through both outputs. A target outside ``[0, vocab)`` has logit 0 (so ``logp = -lse``): the vocab-parallel
wrapper relies on this; mask such tokens out of a loss.

Three implementations with one signature:
  * ``fused_logprob_reference``: the naive one (materialises the logits; autodiff);
  * ``fused_logprob_chunked``: pure JAX, ``lax.scan`` over vocabulary chunks with an online logsumexp and a
    ``custom_vjp`` whose backward recomputes each chunk's logits; peak temporary ``O(tokens * chunk)``. This is
    the CPU (and TPU) path;
  * ``fused_logprob_pallas``: Pallas kernels (forward, d hidden, d weight; see ``_logprob_kernels``).
Leading dimensions are allowed: ``hidden [..., d]``, ``targets [...]`` -> ``[...]``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from ._common import (
    accelerator_backend,
    check_divisible,
    pad_axis,
    present_axes,
    resolve_interpret,
    round_up,
    spec_entry,
    tile,
)
from ._logprob_kernels import LogprobStatic, logit_grad, logprob_core, transform, transform_grad

FUSED_IMPLS = ("auto", "reference", "chunked", "pallas")


def _flatten(hidden, weight, targets):
    if hidden.ndim < 2 or weight.ndim != 2 or hidden.shape[-1] != weight.shape[0]:
        raise ValueError(
            f"fused_logprob: hidden must be [..., d] and weight [d, vocab] with the same d, got {hidden.shape} and "
            f"{weight.shape}"
        )
    if targets.shape != hidden.shape[:-1]:
        raise ValueError(
            f"fused_logprob: targets must be {hidden.shape[:-1]} (hidden's leading dims), got {targets.shape}"
        )
    return hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1).astype(jnp.int32), hidden.shape[:-1]


def _check_scoring(temperature: float, soft_cap: float | None) -> None:
    if not temperature > 0:
        raise ValueError(f"fused_logprob: temperature must be > 0, got {temperature}")
    if soft_cap is not None and not soft_cap > 0:
        raise ValueError(f"fused_logprob: soft_cap must be > 0 or None, got {soft_cap}")


def _result(lp, lse, lead, return_lse):
    lp, lse = lp.reshape(lead), lse.reshape(lead)
    return (lp, lse) if return_lse else lp


def fused_logprob_reference(
    hidden: jax.Array,
    weight: jax.Array,
    targets: jax.Array,
    *,
    temperature: float = 1.0,
    soft_cap: float | None = None,
    return_lse: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Naive log-prob: full ``[N, vocab]`` float32 logits, ``log_softmax``, pick the target.

    Args:
      hidden: ``[..., d]``; weight: ``[d, vocab]``; targets: ``[...]`` int.
      temperature: divides the (capped) logits; soft_cap: ``cap * tanh(z / cap)`` before the temperature.
      return_lse: also return ``logsumexp`` of the scored logits.
    Returns:
      ``logp [...]`` float32, or ``(logp, lse)``.
    """
    _check_scoring(temperature, soft_cap)
    h, t, lead = _flatten(hidden, weight, targets)
    z = transform(jnp.dot(h, weight, preferred_element_type=jnp.float32), temperature, soft_cap)
    lse = jax.nn.logsumexp(z, axis=-1)
    cols = jnp.arange(weight.shape[1])[None, :]
    tgt = jnp.sum(jnp.where(cols == t[:, None], z, 0.0), axis=-1)
    return _result(tgt - lse, lse, lead, return_lse)


# ------------------------------------------------------------------------------------------ chunked (pure JAX)


def _chunk(hidden, weight, i, chunk: int):
    """Raw logits of vocabulary chunk ``i``, its column ids and which columns are new.

    The last chunk is slid back to end at ``vocab`` (no padded copy of the weight); the columns it shares with
    the previous chunk are flagged stale and ignored.
    """
    vocab = weight.shape[1]
    start = jnp.minimum(i * chunk, vocab - chunk)
    w = lax.dynamic_slice_in_dim(weight, start, chunk, axis=1)
    z_raw = jnp.dot(hidden, w, preferred_element_type=jnp.float32)
    cols = start + jnp.arange(chunk)[None, :]
    return z_raw, w, cols, cols >= i * chunk, start


def _chunked_forward(hidden, weight, targets, chunk, temperature, soft_cap):
    n = hidden.shape[0]

    def step(carry, i):
        m, s, tgt = carry
        z_raw, _, cols, fresh, _ = _chunk(hidden, weight, i, chunk)
        z = transform(z_raw, temperature, soft_cap)
        tgt = tgt + jnp.sum(jnp.where((cols == targets[:, None]) & fresh, z, 0.0), axis=1)
        z = jnp.where(fresh, z, -jnp.inf)
        m_new = jnp.maximum(m, jnp.max(z, axis=1))
        s = s * jnp.exp(m - m_new) + jnp.sum(jnp.exp(z - m_new[:, None]), axis=1)
        return (m_new, s, tgt), None

    init = (jnp.full((n,), -jnp.inf, jnp.float32), jnp.zeros((n,), jnp.float32), jnp.zeros((n,), jnp.float32))
    (m, s, tgt), _ = lax.scan(step, init, jnp.arange(-(-weight.shape[1] // chunk)))
    lse = m + jnp.log(s)
    return tgt - lse, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _chunked_core(hidden, weight, targets, chunk, temperature, soft_cap):
    return _chunked_forward(hidden, weight, targets, chunk, temperature, soft_cap)


def _chunked_fwd(hidden, weight, targets, chunk, temperature, soft_cap):
    lp, lse = _chunked_forward(hidden, weight, targets, chunk, temperature, soft_cap)
    return (lp, lse), (hidden, weight, targets, lse)


def _chunked_bwd(chunk, temperature, soft_cap, residuals, cotangents):
    hidden, weight, targets, lse = residuals
    g_lp, g_lse = (jnp.asarray(c, jnp.float32)[:, None] for c in cotangents)

    def step(carry, i):
        dh, dw = carry
        z_raw, w, cols, fresh, start = _chunk(hidden, weight, i, chunk)
        dz = logit_grad(transform(z_raw, temperature, soft_cap), cols, targets[:, None], lse[:, None], g_lp, g_lse)
        dz = transform_grad(z_raw, jnp.where(fresh, dz, 0.0), temperature, soft_cap)
        dh = dh + jnp.dot(dz.astype(w.dtype), w.T, preferred_element_type=jnp.float32)
        dw_chunk = jnp.dot(hidden.T, dz.astype(hidden.dtype), preferred_element_type=jnp.float32)
        # Stale columns of the slid-back last chunk add exactly 0 to what the previous chunk wrote.
        old = lax.dynamic_slice_in_dim(dw, start, chunk, axis=1)
        dw = lax.dynamic_update_slice_in_dim(dw, old + dw_chunk.astype(dw.dtype), start, axis=1)
        return (dh, dw), None

    init = (jnp.zeros(hidden.shape, jnp.float32), jnp.zeros(weight.shape, weight.dtype))
    (dh, dw), _ = lax.scan(step, init, jnp.arange(-(-weight.shape[1] // chunk)))
    return dh.astype(hidden.dtype), dw, None


_chunked_core.defvjp(_chunked_fwd, _chunked_bwd)


def fused_logprob_chunked(
    hidden: jax.Array,
    weight: jax.Array,
    targets: jax.Array,
    *,
    temperature: float = 1.0,
    soft_cap: float | None = None,
    return_lse: bool = False,
    chunk_size: int = 4096,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Vocabulary-chunked log-prob in pure JAX (same arguments and result as ``fused_logprob_reference``).

    ``chunk_size`` columns of logits exist at a time (``[N, chunk_size]`` float32, a few of them in the backward
    pass); it is clipped to the vocabulary size.
    """
    _check_scoring(temperature, soft_cap)
    h, t, lead = _flatten(hidden, weight, targets)
    chunk = max(1, min(int(chunk_size), weight.shape[1]))
    lp, lse = _chunked_core(h, weight, t, chunk, float(temperature), None if soft_cap is None else float(soft_cap))
    return _result(lp, lse, lead, return_lse)


# ------------------------------------------------------------------------------------------------- Pallas


def fused_logprob_pallas(
    hidden: jax.Array,
    weight: jax.Array,
    targets: jax.Array,
    *,
    temperature: float = 1.0,
    soft_cap: float | None = None,
    return_lse: bool = False,
    block_n: int = 64,
    block_v: int = 128,
    block_d: int = 64,
    interpret: bool | None = None,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Pallas log-prob (forward + ``custom_vjp`` backward kernels); arguments and result as the reference.

    Tiles: ``block_n`` tokens x ``block_v`` vocabulary columns, contracted over ``block_d`` slices of ``d``
    (powers of two >= 16). Tokens are padded freely; the weight is copied padded only when ``d`` or the vocabulary
    is not a whole number of tiles (real vocabularies usually are multiples of 128).
    """
    _check_scoring(temperature, soft_cap)
    h, t, lead = _flatten(hidden, weight, targets)
    n, d = h.shape
    vocab = weight.shape[1]
    bn, bv, bd = (
        tile(block_n, n, name="block_n"),
        tile(block_v, vocab, name="block_v"),
        tile(block_d, d, name="block_d"),
    )
    st = LogprobStatic(
        vocab=vocab,
        block_n=bn,
        block_v=bv,
        block_d=bd,
        temperature=float(temperature),
        soft_cap=None if soft_cap is None else float(soft_cap),
        interpret=resolve_interpret(interpret),
    )
    np_, dp, vp = round_up(n, bn), round_up(d, bd), round_up(vocab, bv)
    hp = pad_axis(pad_axis(h, 0, np_), 1, dp)
    wp = pad_axis(pad_axis(weight, 0, dp), 1, vp)
    tp = pad_axis(t, 0, np_, -1)[:, None]
    lp, lse = logprob_core(hp, wp, tp, st)
    return _result(lp[:n, 0], lse[:n, 0], lead, return_lse)


def fused_logprob(
    hidden: jax.Array,
    weight: jax.Array,
    targets: jax.Array,
    *,
    temperature: float = 1.0,
    soft_cap: float | None = None,
    return_lse: bool = False,
    impl: str = "auto",
    chunk_size: int = 4096,
    interpret: bool | None = None,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Dispatcher. ``impl``: ``"auto"`` (Pallas on GPU; the chunked JAX path on CPU and TPU, where the portable
    kernel's whole-weight blocks would not fit VMEM), ``"reference"`` (naive), ``"chunked"``, ``"pallas"``
    (interpreted on CPU)."""
    if impl not in FUSED_IMPLS:
        raise ValueError(f"fused_logprob: impl must be one of {FUSED_IMPLS}, got {impl!r}")
    if impl == "auto":
        impl = "pallas" if accelerator_backend() == "gpu" else "chunked"
    kwargs = dict(temperature=temperature, soft_cap=soft_cap, return_lse=return_lse)
    if impl == "reference":
        return fused_logprob_reference(hidden, weight, targets, **kwargs)
    if impl == "chunked":
        return fused_logprob_chunked(hidden, weight, targets, chunk_size=chunk_size, **kwargs)
    return fused_logprob_pallas(hidden, weight, targets, interpret=interpret, **kwargs)


def fused_logprob_sharded(
    hidden: jax.Array,
    weight: jax.Array,
    targets: jax.Array,
    *,
    mesh: jax.sharding.Mesh,
    token_axes: tuple[str, ...] = ("data", "fsdp"),
    vocab_axis: str | None = "tensor",
    return_lse: bool = False,
    **kwargs,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """``fused_logprob`` under ``jax.shard_map``: tokens (``hidden``'s first dim) over ``token_axes``, the weight's
    vocabulary over ``vocab_axis`` (vocab-parallel cross-entropy).

    Each device scores its own vocabulary slice; the slices' logsumexps are merged with a ``pmax``/``psum`` pair
    and the target's logit is ``psum``-ed from the one slice that holds it, so no device ever holds logits over
    the whole vocabulary. ``hidden [N, ..., d]``, ``targets [N, ...]``. Axes missing from ``mesh`` are ignored.
    """
    tokens, vocab = present_axes(mesh, token_axes), present_axes(mesh, vocab_axis)
    name = "fused_logprob_sharded"
    check_divisible(name, "hidden's first dim", hidden.shape[0], mesh, tokens)
    check_divisible(name, "vocab", weight.shape[1], mesh, vocab)
    tspec, vspec = spec_entry(tokens), spec_entry(vocab)
    rest = (None,) * (hidden.ndim - 2)
    out_spec = P(tspec, *rest)

    def local(h, w, t):
        if not vocab:
            return fused_logprob(h, w, t, return_lse=True, **kwargs)
        offset = lax.axis_index(vocab) * w.shape[1]
        lp, lse = fused_logprob(h, w, t - offset, return_lse=True, **kwargs)
        target_logit = lax.psum(lp + lse, vocab)  # 0 on every slice but the target's
        top = lax.pmax(lax.stop_gradient(lse), vocab)
        lse_all = top + jnp.log(lax.psum(jnp.exp(lse - top), vocab))
        return target_logit - lse_all, lse_all

    fn = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(P(tspec, *rest, None), P(None, vspec), out_spec),
        out_specs=(out_spec, out_spec),
        check_vma=False,
    )
    lp, lse = fn(hidden, weight, targets)
    return (lp, lse) if return_lse else lp

"""Multi-head attention with grouped KV heads (MHA / GQA / MQA), causal + segment masks, RoPE or ALiBi.

``Attention(impl=...)`` picks how the attention itself runs (``ATTENTION_IMPLS``): ``"xla"`` is this file's
``dot_product_attention`` / ``cached_attention``; ``"reference"`` and ``"pallas"`` call ``stepjax.kernels``'
``flash_attention`` (full sequences) and ``decode_attention`` (one new token per row over the KV cache), whose
Pallas versions go through their ``shard_map`` wrappers when a multi-device mesh is active (``jax.set_mesh``);
``"auto"`` is ``"pallas"`` on GPU/TPU and ``"xla"`` elsewhere. Prefill over a cache (several new tokens) always
takes the ``"xla"`` path: the flash kernel's causal mask is aligned to slot 0, not to the cache's fill level.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from stepjax.nn.kernel_dispatch import ATTENTION_IMPLS, kernel_decode_attention, kernel_flash_attention, resolve_impl
from stepjax.nn.linear import Einsum
from stepjax.nn.norms import RMSNorm
from stepjax.nn.positions import alibi_bias, alibi_slopes, apply_rope, rope_inv_freq
from stepjax.sharding import constrain

POSITION_KINDS = ("rope", "alibi", "sqrt_alibi", "none")
_MASKED = -0.7 * float(jnp.finfo(jnp.float32).max)


def attention_mask(
    q_segment_ids: jax.Array,
    k_segment_ids: jax.Array,
    q_index: jax.Array | None = None,
    k_index: jax.Array | None = None,
    *,
    causal: bool = True,
) -> jax.Array:
    """Boolean ``[batch, q_len, k_len]``: key ``j`` is visible to query ``i`` iff same segment (and ``j <= i``).

    ``segment_ids`` number the samples packed in a row (padding is its own segment, conventionally 0). The causal
    order uses the slot index in the row (``q_index``/``k_index``, default ``arange``), not the per-sample position.
    """
    mask = q_segment_ids[:, :, None] == k_segment_ids[:, None, :]
    if causal:
        if q_index is None:
            q_index = jnp.arange(q_segment_ids.shape[1])[None, :]
        if k_index is None:
            k_index = jnp.arange(k_segment_ids.shape[1])[None, :]
        mask = mask & (q_index[:, :, None] >= k_index[:, None, :])
    return mask


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: jax.Array | None = None,
    bias: jax.Array | None = None,
    scale: float | None = None,
) -> jax.Array:
    """Softmax attention with grouped KV heads; logits and softmax in float32.

    Args:
      q: ``[batch, q_len, num_heads, head_dim]``.
      k, v: ``[batch, k_len, num_kv_heads, head_dim]``; ``num_heads`` must be a multiple of ``num_kv_heads``.
      mask: boolean ``[batch, q_len, k_len]`` (True = visible).
      bias: additive ``[batch, num_heads, q_len, k_len]`` (e.g. ALiBi).
    Returns:
      ``[batch, q_len, num_heads, head_dim]`` in ``q.dtype``.
    """
    b, t, n, h = q.shape
    kv = k.shape[2]
    if n % kv:
        raise ValueError(f"num_heads {n} is not a multiple of num_kv_heads {kv}")
    g = n // kv
    scale = h**-0.5 if scale is None else scale
    if bias is None and isinstance(scale, int | float):
        return _grouped_attention(q, k, v, mask, float(scale))
    qg = q.reshape(b, t, kv, g, h)
    logits = jnp.einsum("btkgh,bskh->bkgts", qg, k, preferred_element_type=jnp.float32) * scale
    if bias is not None:
        logits = logits + bias.reshape(b, kv, g, t, -1).astype(jnp.float32)
    if mask is not None:
        logits = jnp.where(mask[:, None, None, :, :], logits, _MASKED)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskh->btkgh", probs, v)
    return out.reshape(b, t, n, h)


def write_cache_rows(cache: jax.Array, new: jax.Array, start: jax.Array) -> jax.Array:
    """Writes ``new [batch, t, ...]`` into ``cache [batch, max_len, ...]`` at slots ``start[b] .. start[b] + t - 1``.

    The caller keeps ``start + t <= max_len`` (``dynamic_update_slice`` would clamp the start otherwise).
    """
    zeros = (0,) * (cache.ndim - 2)
    return jax.vmap(lambda c, x, s: jax.lax.dynamic_update_slice(c, x.astype(c.dtype), (s, *zeros)))(cache, new, start)


def cached_attention(
    q: jax.Array,
    k_cache: jax.Array,
    v_cache: jax.Array,
    q_positions: jax.Array,
    lengths: jax.Array,
    *,
    slopes: jax.Array | None = None,
    sqrt_alibi: bool = False,
    scale: float | None = None,
    impl: str = "xla",
) -> jax.Array:
    """Attention of new queries over a KV cache: the one seam a decode-attention kernel replaces.

    Slot ``j`` of a cache row holds the key at position ``j`` (prompts are right-padded), so key ``j`` is visible to
    a query at position ``p`` iff ``j <= p`` and ``j < lengths``; ALiBi distances are ``p - j``.

    Args:
      q: ``[batch, q_len, num_heads, head_dim]`` (already rotated for RoPE).
      k_cache, v_cache: ``[batch, max_len, num_kv_heads, head_dim]``, already holding the new keys and values.
      q_positions: ``[batch, q_len]`` int, the position (= cache slot) of each query.
      lengths: ``[batch]`` int, the number of valid cache slots per row (after writing the new keys).
      slopes: ALiBi slopes ``[num_heads]`` or None; ``sqrt_alibi`` uses ``sqrt(p - j)`` (Step1).
      impl: ``ATTENTION_IMPLS``; for ``q_len == 1`` the non-``"xla"`` ones run ``stepjax.kernels.decode_attention``,
        which places the query at position ``lengths - 1``. That is the query's position whenever its own key was
        counted in ``lengths`` (every row a sampler advances); a row held back (``lengths == p``, a finished row)
        then sees the same keys with ALiBi measured from ``p - 1``: equal under linear ALiBi (a constant shift),
        not under ``sqrt_alibi``. Such rows' outputs are discarded by ``stepjax.sampling``.
    Returns:
      ``[batch, q_len, num_heads, head_dim]`` in ``q.dtype``.
    """
    impl = resolve_impl(impl)
    if impl != "xla" and q.shape[1] == 1:
        out = kernel_decode_attention(
            q[:, 0], k_cache, v_cache, lengths, slopes=slopes, sqrt_alibi=sqrt_alibi, scale=scale, impl=impl
        )
        return out[:, None]
    k_pos = jnp.arange(k_cache.shape[1], dtype=q_positions.dtype)
    mask = (k_pos[None, None, :] <= q_positions[:, :, None]) & (k_pos[None, None, :] < lengths[:, None, None])
    bias = None
    if slopes is not None:
        k_positions = jnp.broadcast_to(k_pos, (q.shape[0], k_pos.shape[0]))
        bias = alibi_bias(q_positions, k_positions, slopes, sqrt=sqrt_alibi)
    if q.shape[1] == 1:
        return _single_query_attention(q, k_cache, v_cache, mask[:, 0], None if bias is None else bias[:, :, 0], scale)
    return dot_product_attention(q, k_cache, v_cache, mask=mask, bias=bias, scale=scale)


def _single_query_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, bias: jax.Array | None, scale: float | None
) -> jax.Array:
    """Decode-step attention (one query per row) as broadcast-multiply-reduce over the cache's own layout.

    Batched GEMMs with a single query row would make XLA transpose each layer's cache to ``[b, kv, len, h]`` on
    every step; these elementwise products read the cache once, in place. ``mask [b, len]``, ``bias [b, n, len]``.
    """
    b, _, n, h = q.shape
    kv = k.shape[2]
    g = n // kv
    scale = h**-0.5 if scale is None else scale
    qg = q.reshape(b, 1, kv, g, h).astype(jnp.float32) * scale
    logits = jnp.sum(qg * k[:, :, :, None, :].astype(jnp.float32), axis=-1)  # [b, len, kv, g]
    if bias is not None:
        logits = logits + bias.reshape(b, kv, g, -1).transpose(0, 3, 1, 2)
    logits = jnp.where(mask[:, :, None, None], logits, _MASKED)
    probs = jax.nn.softmax(logits, axis=1)
    out = jnp.sum(probs[..., None] * v[:, :, :, None, :].astype(jnp.float32), axis=1)  # [b, kv, g, h]
    return out.reshape(b, 1, n, h).astype(q.dtype)


# Without a bias, attention runs as plain batched GEMMs over [batch, kv_heads, group * q_len, ...] rows with a
# hand-written backward pass: autodiff of the einsums above makes XLA CPU transpose [.., q_len, k_len]-sized
# tensors several times and reduce over k_len in the softmax backward; the rule below uses the usual
# ``dS = P * (dP - rowsum(dO * O))`` and touches each [q_len, k_len] tensor a fixed, small number of times
# (~35% less time for a 57M-model layer's attention on CPU). Same maths; values agree to float reassociation.


def _to_rows(x: jax.Array, kv: int) -> jax.Array:
    """``[b, t, n, h]`` -> ``[b, kv, g * t, h]`` (row ``j * t + i`` is query ``i`` of head ``j`` in the group)."""
    b, t, n, h = x.shape
    return x.reshape(b, t, kv, n // kv, h).transpose(0, 2, 3, 1, 4).reshape(b, kv, n // kv * t, h)


def _from_rows(x: jax.Array, t: int) -> jax.Array:
    """Inverse of ``_to_rows``: ``[b, kv, g * t, h]`` -> ``[b, t, n, h]``."""
    b, kv, rows, h = x.shape
    return x.reshape(b, kv, rows // t, t, h).transpose(0, 3, 1, 2, 4).reshape(b, t, kv * (rows // t), h)


def _row_probs(qh: jax.Array, kh: jax.Array, mask: jax.Array | None, t: int) -> jax.Array:
    """float32 softmax probabilities ``[b, kv, g * t, k_len]`` of (pre-scaled) query rows against keys."""
    b, kv, rows, _ = qh.shape
    logits = jnp.einsum("bkqh,bksh->bkqs", qh, kh, preferred_element_type=jnp.float32)
    if mask is not None:
        logits = logits.reshape(b, kv, rows // t, t, -1)
        logits = jnp.where(mask[:, None, None], logits, _MASKED).reshape(b, kv, rows, -1)
    return jax.nn.softmax(logits, axis=-1)


def _grouped_attention_fwd(q, k, v, mask, scale):
    t, kv = q.shape[1], k.shape[2]
    qh = _to_rows(q * jnp.asarray(scale, q.dtype), kv)
    kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    probs = _row_probs(qh, kh, mask, t)
    out_h = jnp.einsum("bkqs,bksh->bkqh", probs.astype(v.dtype), vh)
    return _from_rows(out_h, t).astype(q.dtype), (qh, kh, vh, probs, out_h, mask)


def _grouped_attention_bwd(scale, residuals, g):
    qh, kh, vh, probs, out_h, mask = residuals
    t, kv = g.shape[1], kh.shape[1]
    gh = _to_rows(g.astype(vh.dtype), kv)
    dv = jnp.einsum("bkqs,bkqh->bksh", probs.astype(vh.dtype), gh)
    dp = jnp.einsum("bkqh,bksh->bkqs", gh, vh, preferred_element_type=jnp.float32)
    delta = jnp.sum(gh.astype(jnp.float32) * out_h.astype(jnp.float32), axis=-1, keepdims=True)
    ds = (probs * (dp - delta)).astype(qh.dtype)
    dq = _from_rows(jnp.einsum("bkqs,bksh->bkqh", ds, kh), t) * jnp.asarray(scale, qh.dtype)
    dk = jnp.einsum("bkqs,bkqh->bksh", ds, qh)
    dmask = None if mask is None else jnp.zeros(mask.shape, jax.dtypes.float0)
    return dq, dk.transpose(0, 2, 1, 3), dv.transpose(0, 2, 1, 3), dmask


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _grouped_attention(q, k, v, mask, scale):
    return _grouped_attention_fwd(q, k, v, mask, scale)[0]


_grouped_attention.defvjp(_grouped_attention_fwd, _grouped_attention_bwd)


class Attention(nnx.Module):
    """Self-attention block: q/k/v projections, optional qk-norm, positions, attention, output projection.

    Call with ``x [batch, len, embed]``, ``positions [batch, len]`` (per-sample positions, used by RoPE/ALiBi) and
    ``segment_ids [batch, len]``; returns ``[batch, len, embed]``. ``impl`` (``ATTENTION_IMPLS``) picks the
    attention path (see the module docstring); parameters and maths are the same for every choice.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        *,
        rngs: nnx.Rngs,
        position: str = "rope",
        rope_theta: float = 10_000.0,
        rope_scaling: Mapping[str, Any] | None = None,
        qkv_bias: bool = False,
        out_bias: bool = False,
        qk_norm: bool = False,
        norm_eps: float = 1e-6,
        kernel_init: nnx.initializers.Initializer = nnx.initializers.normal(0.02),
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        impl: str = "xla",
    ):
        if position not in POSITION_KINDS:
            raise ValueError(f"unknown position {position!r}; expected one of {POSITION_KINDS}")
        if impl not in ATTENTION_IMPLS:
            raise ValueError(f"Attention: impl must be one of {ATTENTION_IMPLS}, got {impl!r}")
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.position = position
        self.dtype = dtype
        self.impl = impl  # resolved at trace time: "auto" depends on the backend the model runs on
        common = dict(rngs=rngs, kernel_init=kernel_init, dtype=dtype, param_dtype=param_dtype)

        def proj(heads: int, heads_axis: str) -> Einsum:
            return Einsum(
                "btd,dnh->btnh",
                (embed_dim, heads, head_dim),
                ("embed", heads_axis, "head_dim"),
                bias_shape=(heads, head_dim) if qkv_bias else None,
                bias_axes=(heads_axis, "head_dim") if qkv_bias else None,
                **common,
            )

        self.q_proj = proj(num_heads, "heads")
        self.k_proj = proj(num_kv_heads, "kv_heads")
        self.v_proj = proj(num_kv_heads, "kv_heads")
        self.o_proj = Einsum(
            "btnh,nhd->btd",
            (num_heads, head_dim, embed_dim),
            ("heads", "head_dim", "embed"),
            bias_shape=(embed_dim,) if out_bias else None,
            bias_axes=("embed",) if out_bias else None,
            **common,
        )
        norm = dict(rngs=rngs, eps=norm_eps, axis_name="head_dim", dtype=dtype, param_dtype=param_dtype)
        self.q_norm = RMSNorm(head_dim, **norm) if qk_norm else None
        self.k_norm = RMSNorm(head_dim, **norm) if qk_norm else None
        # Constants, not parameters: kept as plain (static) attributes so they never enter the optimizer state.
        self.inv_freq = (
            tuple(rope_inv_freq(head_dim, rope_theta, rope_scaling).tolist()) if position == "rope" else None
        )
        self.slopes = tuple(alibi_slopes(num_heads).tolist()) if "alibi" in position else None

    def _qkv(self, x: jax.Array, positions: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Projected (qk-normed, RoPE-rotated) ``q [b, t, n, h]``, ``k, v [b, t, kv, h]``."""
        q = constrain(self.q_proj(x), ("act_batch", "act_len", "act_heads", None))
        k = constrain(self.k_proj(x), ("act_batch", "act_len", "act_kv_heads", None))
        v = constrain(self.v_proj(x), ("act_batch", "act_len", "act_kv_heads", None))
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.position == "rope":
            q = apply_rope(q, positions, jnp.asarray(self.inv_freq))
            k = apply_rope(k, positions, jnp.asarray(self.inv_freq))
        return q, k, v

    def __call__(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array) -> jax.Array:
        q, k, v = self._qkv(x, positions)
        impl = resolve_impl(self.impl)
        sqrt = self.position == "sqrt_alibi"
        if impl != "xla":
            slopes = None if self.slopes is None else jnp.asarray(self.slopes, jnp.float32)
            out = kernel_flash_attention(q, k, v, positions, segment_ids, slopes=slopes, sqrt_alibi=sqrt, impl=impl)
        else:
            bias = None
            if self.slopes is not None:
                bias = alibi_bias(positions, positions, jnp.asarray(self.slopes), sqrt=sqrt)
            mask = attention_mask(segment_ids, segment_ids)
            out = dot_product_attention(q, k, v, mask=mask, bias=bias)
        out = constrain(out, ("act_batch", "act_len", "act_heads", None))
        return self.o_proj(out)

    def extend(
        self, x: jax.Array, positions: jax.Array, k_cache: jax.Array, v_cache: jax.Array, lengths: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Cached attention for new tokens ``x [batch, t, embed]`` at consecutive ``positions [batch, t]``.

        Writes their keys/values into ``k_cache, v_cache [batch, max_len, kv_heads, head_dim]`` at slots
        ``positions[:, 0] ...`` and attends over the cache (``cached_attention``; ``lengths [batch]`` = valid slots
        after the write). Returns ``(out [batch, t, embed], k_cache, v_cache)``.
        """
        q, k, v = self._qkv(x, positions)
        k_cache = write_cache_rows(k_cache, k, positions[:, 0])
        v_cache = write_cache_rows(v_cache, v, positions[:, 0])
        slopes = None if self.slopes is None else jnp.asarray(self.slopes)
        out = cached_attention(
            q,
            k_cache,
            v_cache,
            positions,
            lengths,
            slopes=slopes,
            sqrt_alibi=self.position == "sqrt_alibi",
            impl=self.impl,
        )
        out = constrain(out, ("act_batch", "act_len", "act_heads", None))
        return self._project_out(out), k_cache, v_cache

    def _project_out(self, out: jax.Array) -> jax.Array:
        """``o_proj`` as one ``[b, t, n*h] x [n*h, d]`` contraction. ``jnp.einsum`` orders contracted letters
        alphabetically, so ``btnh,nhd->btd`` contracts ``(h, n)`` and XLA transposes the kernel on every call -- per
        decode step, a full copy of each layer's output projection. Same parameters, same maths."""
        b, t, n, h = out.shape
        kernel = self.o_proj.kernel[...].astype(self.dtype).reshape(n * h, -1)
        y = jnp.einsum("btk,kd->btd", out.reshape(b, t, n * h).astype(self.dtype), kernel)
        if self.o_proj.bias is not None:
            y = y + self.o_proj.bias[...].astype(self.dtype)
        return y

"""Position encodings: rotary (RoPE, with frequency-scaling hooks) and ALiBi (linear and square-root)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# ----------------------------------------------------------------------------------------------- RoPE

RopeScaling = Callable[[np.ndarray, Mapping[str, Any]], np.ndarray]
_ROPE_SCALINGS: dict[str, RopeScaling] = {}


def register_rope_scaling(name: str) -> Callable[[RopeScaling], RopeScaling]:
    """Registers ``fn(inv_freq, params) -> inv_freq`` under ``name`` (the ``rope_scaling['type']`` value)."""

    def wrap(fn: RopeScaling) -> RopeScaling:
        _ROPE_SCALINGS[name] = fn
        return fn

    return wrap


@register_rope_scaling("linear")
def _linear_scaling(inv_freq: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
    return inv_freq / float(params["factor"])


@register_rope_scaling("llama3")
def _llama3_scaling(inv_freq: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
    # Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, a smooth ramp in between.
    factor = float(params["factor"])
    low = float(params.get("low_freq_factor", 1.0))
    high = float(params.get("high_freq_factor", 4.0))
    old_len = float(params.get("original_max_position_embeddings", 8192))
    wavelen = 2 * math.pi / inv_freq
    smooth = (old_len / wavelen - low) / (high - low)
    scaled = np.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    mid = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    is_mid = (wavelen <= old_len / low) & (wavelen >= old_len / high)
    return np.where(is_mid, mid, scaled)


def rope_inv_freq(head_dim: int, theta: float, scaling: Mapping[str, Any] | None = None) -> np.ndarray:
    """Inverse frequencies ``theta^(-2i/head_dim)``, ``[head_dim // 2]`` float64, optionally rescaled."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    if scaling:
        kind = scaling.get("type") or scaling.get("rope_type")
        if kind not in _ROPE_SCALINGS:
            raise ValueError(f"unknown rope_scaling type {kind!r}; registered: {sorted(_ROPE_SCALINGS)}")
        inv_freq = _ROPE_SCALINGS[kind](inv_freq, scaling)
    return inv_freq


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray | jax.Array) -> jax.Array:
    """Rotates pairs ``(x[..., i], x[..., i + d/2])`` by angle ``position * inv_freq[i]`` (the HF "rotate_half" layout).

    Args:
      x: ``[batch, len, heads, head_dim]``.
      positions: ``[batch, len]`` integer positions.
      inv_freq: ``[head_dim // 2]``.
    """
    angles = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq, jnp.float32)  # [b, t, d/2]
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    x32 = x.astype(jnp.float32)
    first, second = jnp.split(x32, 2, axis=-1)
    rotated = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
    return rotated.astype(x.dtype)


# ---------------------------------------------------------------------------------------------- ALiBi


def alibi_slopes(num_heads: int) -> np.ndarray:
    """Per-head ALiBi slopes ``[num_heads]`` (Press et al.; the Step1 LM uses the same slopes).

    With ``n = 2^floor(log2 H)``: ``2^(-8k/n)`` for ``k = 1..n``, then for ``H > n`` the odd-indexed slopes of the
    ``2n`` sequence, ``2^(-4k/n)`` for ``k = 1, 3, ..., 2(H - n) - 1``.
    """
    n = 2 ** math.floor(math.log2(num_heads))
    slopes = [2.0 ** (-8.0 * k / n) for k in range(1, n + 1)]
    slopes += [2.0 ** (-4.0 * k / n) for k in range(1, 2 * (num_heads - n), 2)]
    return np.asarray(slopes, dtype=np.float64)


def alibi_bias(
    q_positions: jax.Array, k_positions: jax.Array, slopes: np.ndarray | jax.Array, *, sqrt: bool = False
) -> jax.Array:
    """ALiBi additive bias ``-slope_h * f(i - j)`` with ``f`` the identity or, for the Step1 LM, ``sqrt``.

    Args:
      q_positions: ``[batch, q_len]``; k_positions: ``[batch, k_len]``.
    Returns:
      ``[batch, heads, q_len, k_len]`` float32. Future keys (``j > i``) get distance 0; the causal mask removes them.
    """
    distance = (q_positions[:, :, None] - k_positions[:, None, :]).astype(jnp.float32)
    distance = jnp.maximum(distance, 0.0)
    if sqrt:
        distance = jnp.sqrt(distance)
    return -jnp.asarray(slopes, jnp.float32)[None, :, None, None] * distance[:, None, :, :]

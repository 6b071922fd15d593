"""RMSNorm and LayerNorm; statistics are computed in float32 whatever the compute dtype."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from stepjax.nn.linear import param


class RMSNorm(nnx.Module):
    """``y = x / sqrt(mean(x^2) + eps) * scale`` over the last axis. ``x``: ``[..., dim]``."""

    def __init__(
        self,
        dim: int,
        *,
        rngs: nnx.Rngs,
        eps: float = 1e-6,
        axis_name: str = "norm",
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
    ):
        self.eps = eps
        self.dtype = dtype
        self.scale = param(rngs, nnx.initializers.ones_init(), (dim,), (axis_name,), param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (y * self.scale[...].astype(jnp.float32)).astype(self.dtype)


class LayerNorm(nnx.Module):
    """``y = (x - mean) / sqrt(var + eps) * scale + bias`` over the last axis. ``x``: ``[..., dim]``."""

    def __init__(
        self,
        dim: int,
        *,
        rngs: nnx.Rngs,
        eps: float = 1e-5,
        use_bias: bool = True,
        axis_name: str = "norm",
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
    ):
        self.eps = eps
        self.dtype = dtype
        self.scale = param(rngs, nnx.initializers.ones_init(), (dim,), (axis_name,), param_dtype)
        self.bias = param(rngs, nnx.initializers.zeros_init(), (dim,), (axis_name,), param_dtype) if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...].astype(jnp.float32)
        if self.bias is not None:
            y = y + self.bias[...].astype(jnp.float32)
        return y.astype(self.dtype)


def make_norm(kind: str, dim: int, *, rngs: nnx.Rngs, eps: float, dtype, param_dtype, axis_name: str = "norm"):
    """``kind``: ``'rms'`` or ``'layer'``."""
    if kind == "rms":
        return RMSNorm(dim, rngs=rngs, eps=eps, axis_name=axis_name, dtype=dtype, param_dtype=param_dtype)
    if kind == "layer":
        return LayerNorm(dim, rngs=rngs, eps=eps, axis_name=axis_name, dtype=dtype, param_dtype=param_dtype)
    raise ValueError(f"unknown norm {kind!r}; expected 'rms' or 'layer'")

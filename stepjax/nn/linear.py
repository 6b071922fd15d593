"""Dense layers as named einsums.

Every parameter carries ``logical_axes`` metadata (one name per dimension); ``stepjax.sharding`` maps those names
to mesh axes. Kernels are stored in ``param_dtype`` and cast to ``dtype`` for compute (mixed precision).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Initializer = nnx.initializers.Initializer


def param(
    rngs: nnx.Rngs,
    init: Initializer,
    shape: Sequence[int],
    logical_axes: Sequence[str | None],
    dtype: jnp.dtype = jnp.float32,
) -> nnx.Param:
    """An ``nnx.Param`` initialised by ``init`` and tagged with its logical axis names."""
    if len(shape) != len(logical_axes):
        raise ValueError(f"shape {tuple(shape)} and logical_axes {tuple(logical_axes)} differ in rank")
    return nnx.Param(init(rngs.params(), tuple(shape), dtype), logical_axes=tuple(logical_axes))


class Einsum(nnx.Module):
    """``y = einsum(equation, x, kernel) (+ bias)`` with a named kernel.

    Example: a query projection ``Einsum('btd,dnh->btnh', (d, n, h), ('embed', 'heads', 'head_dim'))``.

    Args:
      equation: einsum from (input, kernel) to output.
      kernel_shape / kernel_axes: kernel shape and logical names.
      bias_shape / bias_axes: optional bias added to the output's trailing dimensions.
    """

    def __init__(
        self,
        equation: str,
        kernel_shape: Sequence[int],
        kernel_axes: Sequence[str | None],
        *,
        rngs: nnx.Rngs,
        bias_shape: Sequence[int] | None = None,
        bias_axes: Sequence[str | None] | None = None,
        kernel_init: Initializer = nnx.initializers.normal(0.02),
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
    ):
        self.equation = equation
        self.dtype = dtype
        self.kernel = param(rngs, kernel_init, kernel_shape, kernel_axes, param_dtype)
        self.bias = None if bias_shape is None else param(
            rngs, nnx.initializers.zeros_init(), bias_shape, bias_axes, param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.einsum(self.equation, x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


def linear(
    in_features: int,
    out_features: int,
    axes: tuple[str | None, str | None],
    *,
    rngs: nnx.Rngs,
    use_bias: bool = False,
    kernel_init: Initializer = nnx.initializers.normal(0.02),
    dtype: jnp.dtype = jnp.float32,
    param_dtype: jnp.dtype = jnp.float32,
) -> Einsum:
    """A ``[..., in] -> [..., out]`` dense layer with kernel ``[in, out]`` named ``axes``."""
    return Einsum(
        "...d,df->...f",
        (in_features, out_features),
        axes,
        rngs=rngs,
        bias_shape=(out_features,) if use_bias else None,
        bias_axes=(axes[1],) if use_bias else None,
        kernel_init=kernel_init,
        dtype=dtype,
        param_dtype=param_dtype,
    )

"""Dense layers as named einsums.

Every parameter carries ``logical_axes`` metadata (one name per dimension); ``stepjax.sharding`` maps those names
to mesh axes. Kernels are stored in ``param_dtype`` and cast to ``dtype`` for compute (mixed precision).
"""

from __future__ import annotations

import functools
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
        self.bias = (
            None
            if bias_shape is None
            else param(rngs, nnx.initializers.zeros_init(), bias_shape, bias_axes, param_dtype)
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        y = dense_einsum(self.equation, x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


def _explicit(equation: str, x_ndim: int) -> tuple[str, str, str]:
    """``'...d,df->...f'`` -> ``('ABd', 'df', 'ABf')`` for a rank-3 ``x``: labels without ellipses."""
    lhs, out = equation.replace(" ", "").split("->")
    x_labels, k_labels = lhs.split(",")
    if "..." in x_labels:
        free = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if c not in equation][: x_ndim - len(x_labels) + 3]
        x_labels = x_labels.replace("...", "".join(free))
        out = out.replace("...", "".join(free))
    return x_labels, k_labels, out


def dense_einsum(equation: str, x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``jnp.einsum(equation, x, kernel)`` for a dense layer, with a VJP laid out for XLA's CPU GEMMs.

    ``x`` holds batch-like axes (absent from the kernel) and contracted axes; the kernel holds contracted and output
    axes. The kernel gradient contracts over the batch-like axes, which lead both ``x`` and the output cotangent;
    left to autodiff, XLA CPU then transposes the big cotangent in a strided loop. Transposing the smaller ``x``
    first (an optimization barrier stops XLA folding the transpose back) gives a plain row-major GEMM. The same
    products and sums are computed, so results match autodiff up to float reassociation.
    """
    return _dense_einsum(_explicit(equation, x.ndim), x, kernel)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _dense_einsum(labels: tuple[str, str, str], x: jax.Array, kernel: jax.Array) -> jax.Array:
    x_labels, k_labels, out = labels
    return jnp.einsum(f"{x_labels},{k_labels}->{out}", x, kernel)


def _dense_einsum_fwd(labels, x, kernel):
    return _dense_einsum(labels, x, kernel), (x, kernel)


def _dense_einsum_bwd(labels, residuals, g):
    x_labels, k_labels, out = labels
    x, kernel = residuals
    dx = jnp.einsum(f"{out},{k_labels}->{x_labels}", g, kernel)
    contracted = [c for c in x_labels if c in k_labels]
    batch_like = [c for c in x_labels if c not in k_labels]
    order = [x_labels.index(c) for c in contracted + batch_like]
    x_t = jax.lax.optimization_barrier(jnp.transpose(x, order))
    dk = jnp.einsum(f"{''.join(contracted + batch_like)},{out}->{k_labels}", x_t, g)
    return dx.astype(x.dtype), dk.astype(kernel.dtype)


_dense_einsum.defvjp(_dense_einsum_fwd, _dense_einsum_bwd)


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

"""Small helpers shared by the Pallas kernels: dispatch, padding, compiler parameters, in-kernel dots.

The kernels are written in Pallas's portable style (``pl.pallas_call`` + ``BlockSpec`` + grid, loops inside the
kernel over whole-array refs): that is the form the Triton GPU backend lowers, and the form ``interpret=True`` runs
on CPU. Every tile that is loaded has power-of-two sides of at least 16 (Triton's ``tl.dot`` minimum), so the
wrappers pad lengths, head dims and group sizes to such sizes and slice the results.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

IMPLS = ("auto", "reference", "pallas")
#: Logit of a key the mask hides. Same value as ``stepjax.nn.attention`` so that a row whose keys are all hidden
#: behaves the same (finite, uniform) in the kernels and in the model.
MASKED = -0.7 * float(np.finfo(np.float32).max)
#: Logit of a slot that exists only because a kernel padded its input: lower than ``MASKED`` so that it gets
#: probability exactly 0 even in a row where every real key is masked (``exp(EXCLUDED - MASKED)`` underflows to 0).
EXCLUDED = -0.9 * float(np.finfo(np.float32).max)
#: Smallest tile side: Triton's ``dot`` needs at least 16 along every dimension.
MIN_BLOCK = 16


def accelerator_backend() -> str | None:
    """``"gpu"`` or ``"tpu"`` when JAX's default backend is an accelerator that lowers Pallas, else ``None``."""
    backend = jax.default_backend()
    if backend in ("gpu", "cuda", "rocm"):
        return "gpu"
    if backend == "tpu":
        return "tpu"
    return None


def resolve_impl(impl: str, *, name: str) -> str:
    """``"auto"`` -> ``"pallas"`` on GPU/TPU, ``"reference"`` on CPU; other values are checked and returned."""
    if impl not in IMPLS:
        raise ValueError(f"{name}: impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        return "pallas" if accelerator_backend() else "reference"
    return impl


def resolve_interpret(interpret: bool | None) -> bool:
    """``None`` -> interpret exactly when no accelerator backend is present (Pallas runs on CPU only so)."""
    return accelerator_backend() is None if interpret is None else bool(interpret)


def compiler_params(num_dims: int, *, num_warps: int = 4, num_stages: int = 2, interpret: bool) -> Any:
    """Backend-specific ``compiler_params`` for ``pallas_call`` (``None`` in interpret mode)."""
    if interpret:
        return None
    backend = accelerator_backend()
    if backend == "gpu":
        from jax.experimental.pallas import triton as pltriton

        return pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages)
    if backend == "tpu":
        from jax.experimental.pallas import tpu as pltpu

        return pltpu.CompilerParams(dimension_semantics=("parallel",) * num_dims)
    return None


def next_pow2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, n))))


def tile(requested: int, extent: int, *, name: str) -> int:
    """A tile side for an axis of ``extent``: ``requested`` (a power of two >= 16) shrunk to the axis, floored at 16."""
    if requested < MIN_BLOCK or requested & (requested - 1):
        raise ValueError(f"{name} must be a power of two >= {MIN_BLOCK}, got {requested}")
    return max(MIN_BLOCK, min(requested, next_pow2(extent)))


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def pad_axis(x: jax.Array, axis: int, size: int, value: Any = 0) -> jax.Array:
    """Pads ``x`` along ``axis`` at the end to ``size`` (no copy when already that size)."""
    extra = size - x.shape[axis]
    if extra == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths, constant_values=value)


def dot_nt(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a @ b.T`` for 2-D tiles, accumulated in float32."""
    return lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)


def dot_tn(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a.T @ b`` for 2-D tiles, accumulated in float32."""
    return lax.dot_general(a, b, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)


def dot_nn(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a @ b`` for 2-D tiles, accumulated in float32."""
    return lax.dot_general(a, b, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)


def alibi_distance(q_pos: jax.Array, k_pos: jax.Array, *, sqrt: bool) -> jax.Array:
    """``f(max(q_pos - k_pos, 0))`` as float32 (``f`` = sqrt for the Step1 LM's square-root ALiBi, else identity).

    Same formula as ``stepjax.nn.positions.alibi_bias``: future keys get distance 0 (the causal mask hides them).
    """
    distance = jnp.maximum((q_pos - k_pos).astype(jnp.float32), 0.0)
    return jnp.sqrt(distance) if sqrt else distance


def present_axes(mesh: jax.sharding.Mesh, axes: str | Sequence[str] | None) -> tuple[str, ...]:
    """The named axes that ``mesh`` has (size-1 axes included), as a tuple; ``None`` -> ``()``."""
    if axes is None:
        return ()
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    return tuple(a for a in axes if a in mesh.axis_names)


def axes_size(mesh: jax.sharding.Mesh, axes: Sequence[str]) -> int:
    return math.prod(mesh.shape[a] for a in axes)


def spec_entry(axes: Sequence[str]) -> str | tuple[str, ...] | None:
    """A ``PartitionSpec`` entry for a dimension split over ``axes`` (``None`` when there are none)."""
    if not axes:
        return None
    return axes[0] if len(axes) == 1 else tuple(axes)


def check_divisible(name: str, dim_name: str, size: int, mesh: jax.sharding.Mesh, axes: Sequence[str]) -> None:
    parts = axes_size(mesh, axes)
    if size % parts:
        raise ValueError(
            f"{name}: {dim_name} {size} is not divisible by the {parts} devices of mesh axes {tuple(axes)}"
        )

"""Device meshes from config."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

#: Mesh axes every stepjax mesh has, outermost first (slowest interconnect first).
MESH_AXES: tuple[str, ...] = ("data", "fsdp", "sequence", "tensor", "expert")


class MeshConfigError(ValueError):
    """The requested mesh shape does not fit the devices."""


def resolve_mesh_shape(shape: Mapping[str, int], num_devices: int) -> dict[str, int]:
    """Fills one ``-1`` entry so the product equals ``num_devices``; validates the result.

    Args:
      shape: axis name -> size; unknown axis names are an error, missing axes get size 1.
      num_devices: devices the mesh must cover exactly.
    """
    unknown = sorted(set(shape) - set(MESH_AXES))
    if unknown:
        raise MeshConfigError(f"mesh.shape has unknown axes {unknown}; known axes are {list(MESH_AXES)}")
    sizes = {axis: int(shape.get(axis, 1)) for axis in MESH_AXES}
    fill = [a for a, n in sizes.items() if n == -1]
    if len(fill) > 1:
        raise MeshConfigError(f"mesh.shape may have at most one -1 entry, got {fill}")
    bad = {a: n for a, n in sizes.items() if n == 0 or n < -1}
    if bad:
        raise MeshConfigError(f"mesh.shape sizes must be positive or -1, got {bad}")
    fixed = math.prod(n for n in sizes.values() if n != -1)
    if fill:
        if num_devices % fixed:
            raise MeshConfigError(
                f"mesh.shape {dict(shape)}: the fixed axes multiply to {fixed}, which does not divide the "
                f"{num_devices} available devices"
            )
        sizes[fill[0]] = num_devices // fixed
    elif fixed != num_devices:
        raise MeshConfigError(
            f"mesh.shape {dict(shape)} covers {fixed} devices but {num_devices} are available; "
            "make the product match, or put -1 on one axis to fill the rest"
        )
    return sizes


def make_mesh(shape: Mapping[str, int] | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds a mesh over all (or the given) devices with axes ``MESH_AXES``, all of Auto type.

    Auto axes give GSPMD-style propagation (sharding-in-types Explicit axes are opt-in per module).
    The default shape puts every device on ``data``.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = resolve_mesh_shape(shape or {"data": -1}, len(devices))
    axis_shape = tuple(sizes[a] for a in MESH_AXES)
    if devices == list(jax.devices()):
        return jax.make_mesh(axis_shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))
    grid = np.asarray(devices, dtype=object).reshape(axis_shape)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def batch_axes() -> tuple[str, ...]:
    """Mesh axes a global batch is split over."""
    return ("data", "fsdp")

"""Parameter shardings from the ``logical_axes`` metadata that stepjax layers attach to every ``nnx.Param``."""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from stepjax.sharding.rules import Rules, logical_to_spec

#: Leading axis name of parameters stacked by layer scan.
LAYERS_AXIS = "layers"


def _is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def variable_logical_axes(var: nnx.Variable) -> tuple[str | None, ...]:
    """Logical names of one variable, with ``layers`` prepended for scan-stacked parameters."""
    value = var.get_value() if hasattr(var, "get_value") else var[...]
    ndim = len(value.shape)
    axes = tuple(var.get_metadata().get("logical_axes") or ())
    if len(axes) == ndim - 1:
        axes = (LAYERS_AXIS, *axes)
    if len(axes) != ndim:
        axes = (None,) * ndim  # unnamed: replicate
    return axes


def logical_axes_tree(state: nnx.State) -> nnx.State:
    """Same structure as ``state`` with each variable's value replaced by its logical axis names."""
    return jax.tree.map(lambda v: v.replace(variable_logical_axes(v)), state, is_leaf=_is_variable)


def partition_specs(state: nnx.State, rules: Rules, mesh: Mesh | None = None) -> nnx.State:
    """PartitionSpecs for every variable of ``state`` (a pytree of the same structure)."""
    names = None if mesh is None else mesh.axis_names
    return jax.tree.map(
        lambda v: v.replace(logical_to_spec(variable_logical_axes(v), rules, names)), state, is_leaf=_is_variable
    )


def named_shardings(state: nnx.State, mesh: Mesh, rules: Rules) -> nnx.State:
    """NamedShardings for ``state`` on ``mesh``; dimensions a mesh axis does not divide are replicated."""

    def one(v: nnx.Variable):
        value = v.get_value() if hasattr(v, "get_value") else v[...]
        spec = logical_to_spec(variable_logical_axes(v), rules, mesh.axis_names)
        fixed = []
        for dim, axes in zip(value.shape, tuple(spec) + (None,) * (len(value.shape) - len(spec)), strict=True):
            group = (axes,) if isinstance(axes, str) else (axes or ())
            size = 1
            for a in group:
                size *= mesh.shape[a]
            fixed.append(axes if size > 1 and dim % size == 0 else None)
        return v.replace(NamedSharding(mesh, PartitionSpec(*fixed)))

    return jax.tree.map(one, state, is_leaf=_is_variable)


def spec_table(state: nnx.State, rules: Rules, mesh: Mesh | None = None) -> dict[str, str]:
    """Flat ``{'path/to/param': 'PartitionSpec(...)'}`` table, for golden files and logs."""
    specs = partition_specs(state, rules, mesh)
    flat = nnx.to_flat_state(specs) if hasattr(nnx, "to_flat_state") else specs.flat_state()
    out = {}
    for path, var in flat:
        value = var.get_value() if hasattr(var, "get_value") else var[...]
        out["/".join(str(p) for p in path)] = str(value)
    return dict(sorted(out.items()))

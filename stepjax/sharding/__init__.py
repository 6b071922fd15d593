"""Meshes, logical-axis rules, parameter and activation sharding, multi-host start-up."""

from stepjax.sharding.context import constrain, current_rules, use_rules
from stepjax.sharding.mesh import MESH_AXES, MeshConfigError, batch_axes, make_mesh, resolve_mesh_shape
from stepjax.sharding.partition import (
    LAYERS_AXIS,
    logical_axes_tree,
    named_shardings,
    partition_specs,
    spec_table,
)
from stepjax.sharding.rules import DEFAULT_RULES, Rules, logical_to_spec, normalize_rules

__all__ = [
    "DEFAULT_RULES",
    "LAYERS_AXIS",
    "MESH_AXES",
    "MeshConfigError",
    "Rules",
    "batch_axes",
    "constrain",
    "current_rules",
    "logical_axes_tree",
    "logical_to_spec",
    "make_mesh",
    "named_shardings",
    "normalize_rules",
    "partition_specs",
    "resolve_mesh_shape",
    "spec_table",
    "use_rules",
]

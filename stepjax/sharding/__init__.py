"""Meshes, logical-axis rules, parameter and activation sharding, multi-host start-up."""

from stepjax.sharding.batch import batch_sharding, local_batch_rows, shard_batch
from stepjax.sharding.context import constrain, current_rules, use_rules
from stepjax.sharding.distributed import (
    DistributedConfigError,
    expected_process_count,
    initialize_distributed,
    is_main_process,
    process_count,
)
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
    "DistributedConfigError",
    "MeshConfigError",
    "Rules",
    "batch_axes",
    "batch_sharding",
    "constrain",
    "current_rules",
    "expected_process_count",
    "initialize_distributed",
    "is_main_process",
    "local_batch_rows",
    "logical_axes_tree",
    "logical_to_spec",
    "make_mesh",
    "named_shardings",
    "normalize_rules",
    "partition_specs",
    "process_count",
    "resolve_mesh_shape",
    "shard_batch",
    "spec_table",
    "use_rules",
]

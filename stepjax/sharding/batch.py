"""Placing host batches on a mesh: the batch axis split over the data-parallel axes (logical ``act_batch``).

Every process passes only its *local* slice of the global batch (what its data loader produced);
``jax.make_array_from_process_local_data`` stitches the slices into one global ``jax.Array``. In a single-process
run the local slice is the whole batch, so the same code serves a laptop and a pod.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

from stepjax.sharding.context import current_rules
from stepjax.sharding.rules import Rules, logical_to_spec, normalize_rules


def batch_sharding(mesh: Mesh, rules: Rules | None = None) -> NamedSharding:
    """``NamedSharding`` splitting dimension 0 as ``act_batch`` says (default rules: over ``('data', 'fsdp')``);
    other dimensions are replicated. Fits arrays of any rank >= 1.

    ``rules`` default to the active table (``use_rules``), else ``DEFAULT_RULES``.
    """
    rules = current_rules() if rules is None else normalize_rules(rules)
    return NamedSharding(mesh, logical_to_spec(("act_batch",), rules, mesh.axis_names))


def _batch_shards(sharding: NamedSharding) -> tuple[int, int]:
    """(shards of dim 0 over the whole mesh, distinct dim-0 shards held by this process's devices)."""
    mesh = sharding.mesh
    axes = sharding.spec[0] if len(sharding.spec) else None
    axes = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
    total = int(np.prod([mesh.shape[a] for a in axes], dtype=np.int64))
    local = {d.id for d in mesh.local_devices}
    dims = [mesh.axis_names.index(a) for a in axes]
    coords = {tuple(idx[i] for i in dims) for idx in np.ndindex(mesh.devices.shape) if mesh.devices[idx].id in local}
    return total, len(coords)


def local_batch_rows(mesh: Mesh, global_batch_size: int, rules: Rules | None = None) -> np.ndarray:
    """Rows of the global batch this process feeds to ``shard_batch``, in the order it must stack them.

    With the usual device order these are one contiguous block (process ``p`` of ``P``: rows
    ``[p * B / P, (p + 1) * B / P)``); a data loader reads exactly these. Returns an int array ``[B_local]``.
    """
    sharding = batch_sharding(mesh, rules)
    index_map = sharding.addressable_devices_indices_map((global_batch_size,))
    rows = set()
    for (block,) in index_map.values():
        rows.update(range(*block.indices(global_batch_size)))
    return np.asarray(sorted(rows), dtype=np.int64)


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh, rules: Rules | None = None) -> dict[str, jax.Array]:
    """Host batch -> global arrays on ``mesh``, batch axis split per ``batch_sharding``.

    Args:
      batch: ``{name: array [B_local, ...]}``, this process's slice of the global batch (the whole batch when
        there is one process). All entries share ``B_local``.
      mesh: the (possibly multi-host) mesh.
      rules: logical-axis rules (see ``batch_sharding``).
    Returns:
      ``{name: jax.Array [B_global, ...]}`` with ``B_global = B_local * (batch shards) / (batch shards held by this
      process)``.
    Raises:
      ValueError: an entry is a scalar, entries disagree on ``B_local``, or ``B_local`` does not split evenly over
        this process's batch shards.
    """
    sharding = batch_sharding(mesh, rules)
    total, local = _batch_shards(sharding)
    arrays = {name: np.asarray(value) for name, value in batch.items()}
    for name, value in arrays.items():
        if value.ndim == 0:
            raise ValueError(f"batch[{name!r}] is a scalar; every batch entry needs a leading batch axis")
    sizes = {name: value.shape[0] for name, value in arrays.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"batch entries disagree on the batch size: {sizes}")
    out = {}
    for name, value in arrays.items():
        if value.shape[0] % local:
            raise ValueError(
                f"batch[{name!r}] has {value.shape[0]} rows in this process, which do not split over the {local} "
                f"batch shards of mesh axes {sharding.spec[0]} held by its devices (mesh {dict(mesh.shape)})"
            )
        global_shape = (value.shape[0] // local * total, *value.shape[1:])
        out[name] = jax.make_array_from_process_local_data(sharding, value, global_shape)
    return out

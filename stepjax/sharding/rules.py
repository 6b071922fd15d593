"""Logical axis names -> mesh axes.

Modules name their array dimensions with *logical* names (``embed``, ``heads``, ``act_batch`` ...). A rules
table, held in the config, says which mesh axes each logical name is split over. Nothing in ``stepjax.nn`` or
``stepjax.models`` ever writes a ``PartitionSpec``; they only name axes, and this module turns names into specs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from jax.sharding import PartitionSpec

MeshAxes = str | tuple[str, ...] | None
Rules = tuple[tuple[str, MeshAxes], ...]

#: The default table: FSDP over ``fsdp``, Megatron-style tensor parallelism over ``tensor``, data parallelism
#: over ``data`` (+ ``fsdp`` for activations), sequence parallelism over ``sequence``, experts over ``expert``.
DEFAULT_RULES: Rules = (
    ("act_batch", ("data", "fsdp")),
    ("act_len", "sequence"),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("norm", None),
    ("layers", None),
    ("expert", "expert"),
    # KV cache [batch, cache_len, kv_heads, head_dim] (stepjax.models.llm.cache): rows follow act_batch, heads follow
    # act_kv_heads; the length axis stays whole (a sequence-sharded cache needs a ring/flash decode kernel).
    ("cache_len", None),
)


def normalize_rules(rules: Iterable[Sequence] | Mapping[str, MeshAxes]) -> Rules:
    """Accepts a mapping or a sequence of (logical, mesh axes) pairs; returns a tuple of pairs.

    Config files often hold rules as lists of lists (JSON/YAML friendly); this canonicalises them.
    """
    items = rules.items() if isinstance(rules, Mapping) else rules
    out = []
    for item in items:
        if len(item) != 2:
            raise ValueError(f"sharding rule {item!r} must be a (logical_name, mesh_axes) pair")
        name, axes = item
        if isinstance(axes, list):
            axes = tuple(axes)
        out.append((str(name), axes))
    return tuple(out)


def logical_to_spec(
    logical_axes: Sequence[str | None],
    rules: Rules,
    mesh_axis_names: Sequence[str] | None = None,
) -> PartitionSpec:
    """Maps one array's logical axis names to a ``PartitionSpec``.

    Args:
      logical_axes: one name (or None) per array dimension.
      rules: (logical, mesh axes) pairs; the first rule for a name wins.
      mesh_axis_names: if given, mesh axes not in the mesh are dropped (so one table serves any mesh).

    A mesh axis is used at most once per array: a later dimension that asks for an axis already taken is
    replicated instead (GSPMD would reject the duplicate).
    """
    table = {}
    for name, axes in rules:
        table.setdefault(name, axes)
    used: set[str] = set()
    spec = []
    for name in logical_axes:
        axes = table.get(name) if name is not None else None
        if axes is None:
            spec.append(None)
            continue
        axes = (axes,) if isinstance(axes, str) else tuple(axes)
        if mesh_axis_names is not None:
            axes = tuple(a for a in axes if a in mesh_axis_names)
        axes = tuple(a for a in axes if a not in used)
        used.update(axes)
        if not axes:
            spec.append(None)
        elif len(axes) == 1:
            spec.append(axes[0])
        else:
            spec.append(axes)
    return PartitionSpec(*spec)

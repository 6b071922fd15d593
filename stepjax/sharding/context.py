"""The active rules table, and activation constraints that read it.

Activation constraints need the rules at trace time. They live in a context (like ``jax.set_mesh``) rather
than in every module's constructor so the same model object serves any mesh: ``with use_rules(rules): ...``
around the traced function. Outside any mesh, constraints are no-ops, so CPU notebooks need nothing.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence

import jax

from stepjax.sharding.rules import DEFAULT_RULES, Rules, logical_to_spec, normalize_rules

_state = threading.local()


def current_rules() -> Rules:
    return getattr(_state, "rules", DEFAULT_RULES)


@contextlib.contextmanager
def use_rules(rules) -> Iterator[Rules]:
    """Makes ``rules`` the active logical-axis table inside the block (trace time)."""
    previous = getattr(_state, "rules", None)
    _state.rules = normalize_rules(rules)
    try:
        yield _state.rules
    finally:
        if previous is None:
            del _state.rules
        else:
            _state.rules = previous


def _active_mesh():
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty or mesh.size == 1:
        return None
    return mesh


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """``with_sharding_constraint`` by logical names; identity when no multi-device mesh is set."""
    mesh = _active_mesh()
    if mesh is None:
        return x
    spec = logical_to_spec(logical_axes, current_rules(), mesh.axis_names)
    return jax.lax.with_sharding_constraint(x, spec)

"""The train state: one pytree holding everything a step reads and writes, and its sharded construction."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from stepjax.sharding import named_shardings
from stepjax.sharding.context import current_rules
from stepjax.sharding.rules import Rules


@flax.struct.dataclass
class TrainState:
    """``step`` (int32 scalar), ``params`` (``nnx.State`` of ``nnx.Param``), ``opt_state`` (optax), ``rng`` (base key;
    step ``k`` uses ``fold_in(rng, k)`` so a resumed run draws the same numbers) and ``extra`` (non-trainable
    model variables, usually empty)."""

    step: jax.Array
    params: nnx.State
    opt_state: optax.OptState
    rng: jax.Array
    extra: nnx.State


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """``(graphdef, params, extra)``: trainable ``nnx.Param`` state and everything else."""
    return nnx.split(model, nnx.Param, ...)


def merge_model(graphdef: nnx.GraphDef, params: nnx.State, extra: nnx.State) -> nnx.Module:
    return nnx.merge(graphdef, params, extra)


def create_train_state(
    make_model: Callable[[nnx.Rngs], nnx.Module],
    tx: optax.GradientTransformation,
    *,
    seed: int,
    mesh: Mesh | None = None,
    rules: Rules | None = None,
) -> tuple[nnx.GraphDef, TrainState]:
    """Initialises model and optimizer directly in their target sharding (no host ever holds a full copy).

    Args:
      make_model: ``rngs -> module``; called under ``jax.jit`` (abstractly first, to read shapes and axis names).
      tx: the optimizer.
      seed: fixes parameters and the step RNG.
      mesh / rules: target mesh and logical-axis rules (default: the active ``use_rules`` table, else
        ``DEFAULT_RULES``); without a mesh everything lives on the default device.
    Returns:
      ``(graphdef, state)``.
    """
    abstract = nnx.eval_shape(lambda: make_model(nnx.Rngs(seed)))
    graphdef, abstract_params, abstract_extra = split_model(abstract)

    def init() -> TrainState:
        _, params, extra = split_model(make_model(nnx.Rngs(seed)))
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            rng=jax.random.key_data(jax.random.key(seed + 1)),
            extra=extra,
        )

    if mesh is None:
        return graphdef, jax.jit(init)()
    replicated = NamedSharding(mesh, PartitionSpec())
    param_shardings = named_shardings(abstract_params, mesh, current_rules() if rules is None else rules)
    extra_shardings = jax.tree.map(lambda _: replicated, abstract_extra)
    abstract_state = jax.eval_shape(init)
    opt_shardings = optimizer_state_shardings(abstract_state.opt_state, abstract_params, param_shardings, replicated)
    shardings = TrainState(
        step=replicated,
        params=jax.tree.map(
            lambda v: v.get_value() if isinstance(v, nnx.Variable) else v,
            param_shardings,
            is_leaf=lambda x: isinstance(x, nnx.Variable),
        ),
        opt_state=opt_shardings,
        rng=replicated,
        extra=extra_shardings,
    )
    with jax.set_mesh(mesh):
        state = jax.jit(init, out_shardings=shardings)()
    return graphdef, state


def optimizer_state_shardings(
    abstract_opt_state: Any, abstract_params: nnx.State, param_shardings: nnx.State, replicated: NamedSharding
) -> Any:
    """Optimizer leaves shaped like a parameter get that parameter's sharding; scalars are replicated.

    Moments (``mu``, ``nu``, ...) are whole param trees inside the optax state; we match them by structure.
    """
    param_struct = jax.tree.structure(abstract_params)
    flat_shardings = [
        v.get_value() if isinstance(v, nnx.Variable) else v
        for v in jax.tree.leaves(param_shardings, is_leaf=lambda x: isinstance(x, nnx.Variable))
    ]

    def is_param_tree(x: Any) -> bool:
        try:
            return jax.tree.structure(x) == param_struct
        except Exception:  # non-pytree leaves
            return False

    def assign(x: Any) -> Any:
        if is_param_tree(x):
            return jax.tree.unflatten(param_struct, flat_shardings)
        return jax.tree.map(lambda _: replicated, x)

    return jax.tree.map(assign, abstract_opt_state, is_leaf=is_param_tree)


def state_shardings(state: TrainState) -> TrainState:
    """The shardings of a concrete state's arrays (used as ``out_shardings`` so steps never reshard)."""
    return jax.tree.map(lambda x: x.sharding, state)

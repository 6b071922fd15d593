"""Sharded training equals single-device training: loss, gradients and the updated parameters of one train step.

On 8 fake CPU devices, the tiny LM is initialised with ``create_train_state(mesh=..., rules=DEFAULT_RULES)``, the
batch placed with ``shard_batch``, and the jitted step run under ``jax.set_mesh`` + ``use_rules`` (so activation
constraints are live). Heads, KV heads and the MLP width are chosen so that ``tensor=4`` divides them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec

from stepjax.models.llm import DecoderLM, llm_preset
from stepjax.sharding import DEFAULT_RULES, batch_sharding, make_mesh, shard_batch, use_rules
from stepjax.train.state import create_train_state
from stepjax.train.step import jit_train_step, lm_loss_fn, make_train_step

# GQA with 8 query and 4 KV heads: both split over tensor=4 (the preset's 2 KV heads would be replicated). The
# unrolled model has one layer to keep compiles short (XLA:CPU compile time dominates); the scanned one has two.
CONFIGS = {
    "loop": llm_preset("tiny", num_heads=8, num_kv_heads=4, num_layers=1),
    "scan": llm_preset("tiny", num_heads=8, num_kv_heads=4, scan_layers=True),
}
LR = 0.5
ATOL = 1e-5


def recording_sgd(lr: float) -> optax.GradientTransformation:
    """Plain SGD that also keeps the last gradient in its state, so one jitted step returns the gradients too.

    Its state is a params-shaped tree, so ``create_train_state`` shards it like the parameters.
    """

    def init(params):
        return {"grads": jax.tree.map(jnp.zeros_like, params)}

    def update(grads, state, params=None):
        del state, params
        return jax.tree.map(lambda g: -lr * g, grads), {"grads": grads}

    return optax.GradientTransformation(init, update)


def make_batch(batch_size: int = 8, length: int = 16) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 256, (batch_size, length + 1), dtype=np.int32)
    # Two packed samples per row (second starts at 10) and some masked targets: exercises segments and the mask.
    positions = np.concatenate([np.arange(10), np.arange(length - 10)]).astype(np.int32)
    segments = np.concatenate([np.ones(10), np.full(length - 10, 2)]).astype(np.int32)
    return {
        "inputs": tokens[:, :-1],
        "targets": tokens[:, 1:],
        "loss_mask": (rng.random((batch_size, length)) > 0.25).astype(np.float32),
        "positions": np.broadcast_to(positions, (batch_size, length)).copy(),
        "segment_ids": np.broadcast_to(segments, (batch_size, length)).copy(),
    }


def flat_params(tree) -> dict[str, np.ndarray]:
    return {"/".join(map(str, p)): np.asarray(jax.device_get(v.get_value())) for p, v in nnx.to_flat_state(tree)}


def run_step(cfg, mesh):
    """One train step; returns ``(initial state, new state, metrics)``."""
    tx = recording_sgd(LR)
    graphdef, state = create_train_state(
        lambda rngs: DecoderLM(cfg, rngs=rngs), tx, seed=0, mesh=mesh, rules=DEFAULT_RULES
    )
    step = make_train_step(graphdef, lm_loss_fn(), tx, loss_weights={"lm": 1.0})
    batch = make_batch()
    if mesh is None:
        new_state, metrics = jax.jit(step)(state, batch)
        return state, new_state, metrics
    with jax.set_mesh(mesh), use_rules(DEFAULT_RULES):
        sharded = shard_batch(batch, mesh)
        jitted = jit_train_step(step, state, batch_sharding=batch_sharding(mesh), donate=False)
        new_state, metrics = jitted(state, sharded)
    return state, new_state, metrics


@pytest.fixture(scope="module")
def results():
    """``results(config, shape) -> (initial state, new state, metrics)``, each run once per module (``shape`` None:
    one device, no mesh)."""
    cache = {}

    def get(config: str, shape: dict | None):
        key = (config, None if shape is None else tuple(sorted(shape.items())))
        if key not in cache:
            cache[key] = run_step(CONFIGS[config], None if shape is None else make_mesh(shape))
        return cache[key]

    return get


def assert_trees_close(actual: dict, expected: dict, what: str) -> None:
    assert actual.keys() == expected.keys()
    for key in expected:
        np.testing.assert_allclose(actual[key], expected[key], atol=ATOL, rtol=0, err_msg=f"{what} {key}")


@pytest.mark.parametrize(
    ("config", "shape"),
    [
        # Compiles dominate (~8-13 CPU-s per run on 2 cores): the pure data-parallel and the unrolled 2x2x2 cases
        # are in the slow set; 1x2x4 (fsdp + tensor) and scan 2x2x2 (all three axes) run always.
        pytest.param("loop", {"data": 8}, id="loop-data8", marks=pytest.mark.slow),
        pytest.param("loop", {"data": 2, "fsdp": 2, "tensor": 2}, id="loop-2x2x2", marks=pytest.mark.slow),
        pytest.param("loop", {"data": 1, "fsdp": 2, "tensor": 4}, id="loop-1x2x4"),
        pytest.param("scan", {"data": 2, "fsdp": 2, "tensor": 2}, id="scan-2x2x2"),
    ],
)
def test_sharded_step_matches_single_device(results, devices, config, shape):
    _, ref_state, ref_metrics = results(config, None)
    _, new_state, metrics = results(config, shape)
    assert abs(float(metrics["loss"]) - float(ref_metrics["loss"])) < ATOL
    ref_grads = flat_params(ref_state.opt_state["grads"])
    # The gradients are not trivially zero (so the comparison has teeth).
    assert max(np.abs(g).max() for g in ref_grads.values()) > 1e-3
    assert_trees_close(flat_params(new_state.opt_state["grads"]), ref_grads, "grad")
    assert_trees_close(flat_params(new_state.params), flat_params(ref_state.params), "param")


def test_params_batch_and_optimizer_state_are_sharded(results, devices):
    """On (fsdp=2, tensor=4) the kernels are really split, and a step keeps every array's sharding."""
    shape = {"data": 1, "fsdp": 2, "tensor": 4}
    state, new_state, _ = results("loop", shape)
    mesh = make_mesh(shape)
    layer = state.params["layers"][0]
    q = layer["attn"]["q_proj"]["kernel"].get_value()  # [embed, heads, head_dim] = [64, 8, 8]
    assert q.sharding.spec == PartitionSpec("fsdp", "tensor", None)
    assert q.addressable_shards[0].data.shape == (32, 2, 8)
    k = layer["attn"]["k_proj"]["kernel"].get_value()  # [embed, kv_heads, head_dim] = [64, 4, 8]
    assert k.addressable_shards[0].data.shape == (32, 1, 8)
    down = layer["mlp"]["down_proj"]["kernel"].get_value()  # [mlp, embed]
    assert down.sharding.spec == PartitionSpec("tensor", "fsdp")
    assert down.addressable_shards[0].data.shape == (32, 32)
    embed = state.params["embed"]["embedding"].get_value()  # [vocab, embed]
    assert not embed.sharding.is_fully_replicated
    # Optimizer state shaped like the params is sharded like them.
    grads_q = state.opt_state["grads"]["layers"][0]["attn"]["q_proj"]["kernel"].get_value()
    assert grads_q.sharding.spec == q.sharding.spec
    # The step's outputs keep the input shardings (no silent resharding to replicated).
    same = jax.tree.map(lambda a, b: a.sharding.is_equivalent_to(b.sharding, a.ndim), state, new_state)
    assert all(jax.tree.leaves(same))
    # The batch is split over ('data', 'fsdp'): 2 shards of 4 rows each here, replicated over tensor.
    inputs = shard_batch(make_batch(), mesh)["inputs"]
    assert inputs.sharding.spec == PartitionSpec(("data", "fsdp"))
    assert {s.data.shape for s in inputs.addressable_shards} == {(4, 16)}

"""One process of the two-process training test (``test_multiprocess.py``), and the run both sides share.

    STEPJAX_COORDINATOR=127.0.0.1:PORT STEPJAX_NUM_PROCESSES=2 STEPJAX_PROCESS_ID=I \\
    XLA_FLAGS=--xla_force_host_platform_device_count=2 python tests/sharding/multiprocess_worker.py OUT_DIR

Joins the job through ``initialize_distributed()`` (settings from the environment), builds a mesh over the devices of
all processes, feeds only this process's rows of each fixed global batch, and runs ``STEPS`` train steps of the tiny
LM. Each process ``I`` writes ``OUT_DIR/result_I.json`` (its rows, the device layout, per-step losses, checks of
repeat ``initialize_distributed`` calls); process 0 also writes ``OUT_DIR/params.npz`` (the final parameters,
gathered). The test runs ``train`` in one process and compares.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

GLOBAL_BATCH = 8
SEQ_LEN = 16
STEPS = 3
MESH_SHAPE = {"data": 2, "fsdp": 2}


def global_batch(step: int) -> dict[str, np.ndarray]:
    """The fixed global batch of ``step`` (same on every process): random tokens, two packed samples per row."""
    rng = np.random.default_rng(1000 + step)
    tokens = rng.integers(0, 256, (GLOBAL_BATCH, SEQ_LEN + 1), dtype=np.int32)
    split = SEQ_LEN // 2 + 3
    positions = np.concatenate([np.arange(split), np.arange(SEQ_LEN - split)]).astype(np.int32)
    segment_ids = np.concatenate([np.ones(split), np.full(SEQ_LEN - split, 2)]).astype(np.int32)
    loss_mask = (rng.random((GLOBAL_BATCH, SEQ_LEN)) > 0.2).astype(np.float32)
    return {
        "inputs": tokens[:, :-1],
        "targets": tokens[:, 1:],
        "loss_mask": loss_mask,
        "positions": np.broadcast_to(positions, (GLOBAL_BATCH, SEQ_LEN)).copy(),
        "segment_ids": np.broadcast_to(segment_ids, (GLOBAL_BATCH, SEQ_LEN)).copy(),
    }


def train(mesh) -> tuple[list[float], dict[str, np.ndarray]]:
    """``STEPS`` steps of the tiny LM on ``mesh``, each process feeding its own rows. Returns per-step losses and the
    final parameters as ``{'path/to/param': array}`` (gathered onto every process)."""
    import jax
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec

    from stepjax.models.llm import DecoderLM, llm_preset
    from stepjax.sharding import DEFAULT_RULES, batch_sharding, local_batch_rows, shard_batch, use_rules
    from stepjax.train.optimizer import make_optimizer
    from stepjax.train.state import create_train_state
    from stepjax.train.step import jit_train_step, lm_loss_fn, make_train_step

    cfg = llm_preset("tiny", num_layers=1)  # one layer: compiles dominate the run time
    tx, _ = make_optimizer({"name": "sgd", "learning_rate": 0.5, "momentum": 0.9}, STEPS)
    graphdef, state = create_train_state(
        lambda rngs: DecoderLM(cfg, rngs=rngs), tx, seed=0, mesh=mesh, rules=DEFAULT_RULES
    )
    step = make_train_step(graphdef, lm_loss_fn(), tx, loss_weights={"lm": 1.0})
    rows = local_batch_rows(mesh, GLOBAL_BATCH)
    losses = []
    with jax.set_mesh(mesh), use_rules(DEFAULT_RULES):
        jitted = jit_train_step(step, state, batch_sharding=batch_sharding(mesh))
        for k in range(STEPS):
            local = {name: value[rows] for name, value in global_batch(k).items()}
            state, metrics = jitted(state, shard_batch(local, mesh))
            losses.append(float(metrics["loss"]))
        # Replicate every parameter so each process can read the whole value.
        gathered = jax.jit(lambda p: p, out_shardings=NamedSharding(mesh, PartitionSpec()))(state.params)
    flat = nnx.to_flat_state(gathered)
    params = {"/".join(map(str, path)): np.asarray(var.get_value()) for path, var in flat}
    return losses, params


def main(out_dir: str) -> None:
    import jax

    from stepjax.sharding import (
        DistributedConfigError,
        initialize_distributed,
        is_main_process,
        local_batch_rows,
        make_mesh,
        process_count,
    )

    jax.config.update("jax_default_matmul_precision", "highest")  # as tests/conftest.py, for equal numerics
    start = time.perf_counter()
    joined = initialize_distributed(initialization_timeout=60)
    pid = jax.process_index()
    # A repeat call is a no-op; one asking for another layout is refused.
    repeat_ok = initialize_distributed() is True
    try:
        initialize_distributed(num_processes=3)
        conflict_refused = False
    except DistributedConfigError:
        conflict_refused = True
    mesh = make_mesh(MESH_SHAPE)
    print(f"process {pid}: joined={joined} in {time.perf_counter() - start:.1f}s", flush=True)
    losses, params = train(mesh)
    print(f"process {pid}: trained in {time.perf_counter() - start:.1f}s", flush=True)
    info = {
        "joined": joined,
        "repeat_ok": repeat_ok,
        "conflict_refused": conflict_refused,
        "is_main": is_main_process(),
        "process_count": process_count(),
        "global_devices": jax.device_count(),
        "local_devices": jax.local_device_count(),
        "rows": local_batch_rows(mesh, GLOBAL_BATCH).tolist(),
        "losses": losses,
    }
    if is_main_process():
        np.savez(os.path.join(out_dir, "params.npz"), **params)
    # Written last: its presence means this process finished everything.
    with open(os.path.join(out_dir, f"result_{pid}.json"), "w") as f:
        json.dump(info, f)


if __name__ == "__main__":
    main(sys.argv[1])

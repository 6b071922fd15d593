"""One of two processes of a multi-process ``run_training`` (loopback, 2 CPU devices each, data-parallel mesh).

    python tests/train/multiprocess_worker.py PROCESS_ID PORT WORKDIR TOTAL_STEPS

Each process feeds its own half of the global batch (its own iterator seed) and must get its own iterator state
back on resume. Prints ``RESULT <json>`` with the final step, this process's restored data state and a checksum
of the parameters.
"""

from __future__ import annotations

import json
import os
import sys

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

import jax

pid, port, workdir, total = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid)

import numpy as np  # noqa: E402
from train_helpers import SCHEDULE_STEPS, ArrayIterator, TinyRegressor, regression_loss  # noqa: E402

from stepjax.sharding import make_mesh, shard_batch  # noqa: E402
from stepjax.train import (  # noqa: E402
    CheckpointManager,
    abstract_state,
    create_train_state,
    jit_train_step,
    make_optimizer,
    make_train_step,
    run_training,
)

mesh = make_mesh({"data": 4})
tx, schedule = make_optimizer({"name": "adamw", "learning_rate": 0.05}, SCHEDULE_STEPS)
graphdef, state = create_train_state(lambda r: TinyRegressor(r), tx, seed=0, mesh=mesh)
step = make_train_step(graphdef, regression_loss, tx, loss_weights={"mse": 1.0}, schedule=schedule)
with jax.set_mesh(mesh):
    step_fn = jit_train_step(step, state)
    state = run_training(
        state,
        step_fn,
        ArrayIterator(seed=10 + pid),
        workdir,
        total_steps=total,
        log_every=1,
        checkpoint_every=2,
        put_batch=lambda b: shard_batch(b, mesh),
        progress_bar=False,
    )
with CheckpointManager(os.path.join(workdir, "checkpoints"), create=False) as mgr:
    restored = mgr.restore(total, abstract_state(state))
params = jax.experimental.multihost_utils.process_allgather(state.params, tiled=True)
checksum = float(sum(np.abs(np.asarray(x)).sum() for x in jax.tree.leaves(params)))
print(
    "RESULT " + json.dumps({"step": int(state.step), "data_state": restored.data_state, "checksum": checksum}),
    flush=True,
)

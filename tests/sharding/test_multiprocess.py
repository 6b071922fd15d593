"""Two local processes (``jax.distributed`` over loopback, 2 fake CPU devices each) train like one process.

The workers (``multiprocess_worker.py``) join through ``initialize_distributed()`` from ``STEPJAX_*`` environment
variables, build a (data=2, fsdp=2) mesh over all 4 devices, feed only their own rows of each global batch and run 3
train steps. This test runs the same 3 steps in its own process on 4 of its 8 devices and compares losses and every
final parameter. A hung or crashed worker fails the test within ``TIMEOUT_S``; children never outlive it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from stepjax.sharding import make_mesh

WORKER_PATH = Path(__file__).with_name("multiprocess_worker.py")
NUM_PROCESSES = 2
TIMEOUT_S = 240  # generous for a loaded 2-core CI machine; a healthy run takes ~30-60 s
ATOL = 1e-5


def load_worker():
    spec = importlib.util.spec_from_file_location("stepjax_tests_multiprocess_worker", WORKER_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env(port: int, process_id: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STEPJAX_", "JAX_COORDINATOR", "JAX_LOCAL"))}
    env.update(
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="--xla_force_host_platform_device_count=2",  # replaces the 8 devices conftest gives this process
        STEPJAX_COORDINATOR=f"127.0.0.1:{port}",
        JAX_COORDINATOR_BIND_ADDRESS=f"127.0.0.1:{port}",  # loopback only (JAX's default binds every interface)
        STEPJAX_NUM_PROCESSES=str(NUM_PROCESSES),
        STEPJAX_PROCESS_ID=str(process_id),
    )
    return env


def logs(out: Path) -> str:
    parts = []
    for i in range(NUM_PROCESSES):
        path = out / f"log_{i}.txt"
        text = path.read_text() if path.exists() else "(no log)"
        parts.append(f"--- process {i} (last 3000 chars) ---\n{text[-3000:]}")
    return "\n".join(parts)


def test_two_processes_train_like_one(tmp_path, devices):
    worker = load_worker()
    port = free_port()
    procs: list[subprocess.Popen] = []
    files = []
    try:
        for i in range(NUM_PROCESSES):
            files.append(open(tmp_path / f"log_{i}.txt", "w"))  # noqa: SIM115 - closed in finally
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(WORKER_PATH), str(tmp_path)],
                    env=worker_env(port, i),
                    stdout=files[-1],
                    stderr=subprocess.STDOUT,
                )
            )
        # The single-process reference runs while the workers compile.
        ref_losses, ref_params = worker.train(make_mesh(worker.MESH_SHAPE, devices=devices[:4]))
        deadline = time.monotonic() + TIMEOUT_S
        for p in procs:
            try:
                p.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"a worker did not finish within {TIMEOUT_S}s\n{logs(tmp_path)}")
        codes = [p.returncode for p in procs]
        assert codes == [0] * NUM_PROCESSES, f"worker exit codes {codes}\n{logs(tmp_path)}"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in files:
            f.close()

    results = [json.loads((tmp_path / f"result_{i}.json").read_text()) for i in range(NUM_PROCESSES)]
    for i, r in enumerate(results):
        assert r["joined"] and r["repeat_ok"] and r["conflict_refused"], r
        assert (r["process_count"], r["global_devices"], r["local_devices"]) == (2, 4, 2), r
        assert r["is_main"] == (i == 0)
    # Each process fed its own half of the global batch: disjoint rows that together cover it.
    rows = [set(r["rows"]) for r in results]
    assert [len(r) for r in rows] == [worker.GLOBAL_BATCH // 2] * 2
    assert rows[0] | rows[1] == set(range(worker.GLOBAL_BATCH))

    # Same trajectory as one process: every step's loss and every final parameter.
    losses = results[0]["losses"]
    assert len(losses) == worker.STEPS
    np.testing.assert_allclose(losses, ref_losses, atol=ATOL, rtol=0)
    assert results[1]["losses"] == losses  # the loss is a global value: both processes see the same
    assert abs(ref_losses[-1] - ref_losses[0]) > 1e-3  # the steps changed the parameters
    params = dict(np.load(tmp_path / "params.npz"))
    assert params.keys() == ref_params.keys()
    for key, value in ref_params.items():
        np.testing.assert_allclose(params[key], value, atol=ATOL, rtol=0, err_msg=key)

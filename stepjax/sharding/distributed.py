"""Multi-host start-up: one call that joins this process to JAX's multi-controller runtime, or does nothing.

Every process of a multi-host job runs the same program; ``jax.distributed.initialize`` connects them so that
``jax.devices()`` lists the devices of all hosts and a mesh can span them. Settings come, in this order, from the
arguments (the config), from ``STEPJAX_COORDINATOR`` / ``STEPJAX_NUM_PROCESSES`` / ``STEPJAX_PROCESS_ID``, or from
JAX's own cluster detection (Slurm, Open MPI, Cloud TPU, Kubernetes) when the environment says more than one
process is expected. A plain single-process run (laptop, notebook, one GPU box) initialises nothing.

It must run before anything touches a JAX backend (``jax.devices()``, the first computation, ...).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import jax

logger = logging.getLogger(__name__)

ENV_COORDINATOR = "STEPJAX_COORDINATOR"
ENV_NUM_PROCESSES = "STEPJAX_NUM_PROCESSES"
ENV_PROCESS_ID = "STEPJAX_PROCESS_ID"


class DistributedConfigError(ValueError):
    """Multi-process settings are incomplete or inconsistent."""


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise DistributedConfigError(f"environment variable {name}={raw!r} must be an integer") from None


def _positive_env_int(*names: str) -> int | None:
    for name in names:
        raw = os.environ.get(name, "").strip()
        if raw.isdigit():
            return int(raw)
    return None


def expected_process_count() -> int | None:
    """Process count announced by a cluster launcher's environment (None when no launcher is recognised).

    Covers the launchers JAX auto-detects: Slurm (``srun``), Open MPI (``mpirun``), multi-host Cloud TPU on GKE
    (``TPU_WORKER_HOSTNAMES``), and a coordinator set through JAX's own ``JAX_COORDINATOR_ADDRESS``.
    """
    if "SLURM_JOB_ID" in os.environ and "SLURM_PROCID" in os.environ:
        n = _positive_env_int("SLURM_NTASKS", "SLURM_NPROCS")
        if n is not None:
            return n
    n = _positive_env_int("OMPI_COMM_WORLD_SIZE", "PMIX_SIZE")
    if n is not None:
        return n
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "").strip()
    if hosts:
        return len([h for h in hosts.split(",") if h.strip()])
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return 2  # at least two: someone configured JAX's coordinator for this job
    return None


def _check_settings(coordinator_address: str, num_processes: int, process_id: int) -> None:
    host, sep, port = coordinator_address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise DistributedConfigError(
            f"coordinator address {coordinator_address!r} must look like 'host:port' (e.g. '10.0.0.1:1234')"
        )
    if isinstance(num_processes, bool) or not isinstance(num_processes, int) or num_processes < 1:
        raise DistributedConfigError(f"num_processes must be a positive int, got {num_processes!r}")
    if isinstance(process_id, bool) or not isinstance(process_id, int) or not 0 <= process_id < num_processes:
        raise DistributedConfigError(
            f"process_id must be an int in [0, num_processes={num_processes}), got {process_id!r}"
        )


def _check_matches_running(num_processes: int | None, process_id: int | None) -> None:
    if num_processes is not None and num_processes != jax.process_count():
        raise DistributedConfigError(
            f"jax.distributed is already initialised with {jax.process_count()} processes; "
            f"asked for num_processes={num_processes}"
        )
    if process_id is not None and process_id != jax.process_index():
        raise DistributedConfigError(
            f"jax.distributed is already initialised as process {jax.process_index()}; "
            f"asked for process_id={process_id}"
        )


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: int | Sequence[int] | None = None,
    *,
    cluster_detection: bool | None = None,
    initialization_timeout: int = 300,
) -> bool:
    """Joins the multi-process JAX runtime if this job has several processes; idempotent.

    Args:
      coordinator_address: ``'host:port'`` of process 0 (falls back to ``$STEPJAX_COORDINATOR``).
      num_processes: processes in the job (falls back to ``$STEPJAX_NUM_PROCESSES``).
      process_id: this process's index in ``[0, num_processes)`` (falls back to ``$STEPJAX_PROCESS_ID``).
      local_device_ids: restrict this process to these local accelerators (GPU: one process per device).
      cluster_detection: with none of the three settings given, ``None`` lets JAX auto-detect the cluster only when
        a launcher's environment announces more than one process (see ``expected_process_count``); ``True``
        always asks JAX (e.g. multi-host Cloud TPU VMs, known only to the metadata server); ``False`` never does.
      initialization_timeout: seconds to wait for all processes to connect.
    Returns:
      True if ``jax.distributed`` is (now) initialised, False for a plain single-process run.
    Raises:
      DistributedConfigError: some but not all of the three settings are given, a value is malformed, or a repeat
        call asks for a different process layout than the running one.
    """
    given = {
        "coordinator_address": coordinator_address
        if coordinator_address is not None
        else os.environ.get(ENV_COORDINATOR) or None,
        "num_processes": num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES),
        "process_id": process_id if process_id is not None else _env_int(ENV_PROCESS_ID),
    }
    if jax.distributed.is_initialized():
        # Idempotent: a second call (or a call after someone else initialised JAX) only checks consistency.
        _check_matches_running(given["num_processes"], given["process_id"])
        return True

    missing = [k for k, v in given.items() if v is None]
    if missing and len(missing) < len(given):
        sources = {
            "coordinator_address": ENV_COORDINATOR,
            "num_processes": ENV_NUM_PROCESSES,
            "process_id": ENV_PROCESS_ID,
        }
        present = sorted(set(given) - set(missing))
        raise DistributedConfigError(
            f"multi-process settings are incomplete: got {present} but not {missing}; give all three "
            f"(arguments or {', '.join(sources[m] for m in missing)}), or none to run single-process / "
            "let JAX detect the cluster"
        )
    if not missing:
        _check_settings(given["coordinator_address"], given["num_processes"], given["process_id"])
        kwargs = dict(given, local_device_ids=local_device_ids)
    else:
        expected = expected_process_count()
        if cluster_detection is False or (cluster_detection is None and (expected is None or expected <= 1)):
            return False
        kwargs = dict(local_device_ids=local_device_ids)  # JAX's ClusterEnv fills in the rest
    logger.info("initialising jax.distributed with %s", kwargs if not missing else "JAX's cluster auto-detection")
    try:
        jax.distributed.initialize(initialization_timeout=initialization_timeout, **kwargs)
    except RuntimeError as e:
        if "must be called before" in str(e):
            raise RuntimeError(
                "initialize_distributed() must run before anything touches a JAX backend (jax.devices(), "
                "a first computation, building a mesh): call it at the very start of the program"
            ) from e
        raise
    return True


def is_main_process() -> bool:
    """True on process 0 (the one that writes logs, plots and checkpoints metadata)."""
    return jax.process_index() == 0


def process_count() -> int:
    """Number of processes in the job (1 for a single-process run)."""
    return jax.process_count()

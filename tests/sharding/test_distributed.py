"""Multi-host start-up settings (``stepjax.sharding.distributed``), in one process.

Joining a real two-process runtime is ``test_multiprocess.py``; here ``jax.distributed.initialize`` is replaced by a
recorder, so these tests check which settings reach it and which are refused before it is called.
"""

from __future__ import annotations

import jax
import pytest

from stepjax.sharding import distributed
from stepjax.sharding.distributed import (
    DistributedConfigError,
    expected_process_count,
    initialize_distributed,
    is_main_process,
    process_count,
)

CLUSTER_VARS = (
    "SLURM_JOB_ID",
    "SLURM_PROCID",
    "SLURM_NTASKS",
    "SLURM_NPROCS",
    "OMPI_COMM_WORLD_SIZE",
    "PMIX_SIZE",
    "TPU_WORKER_HOSTNAMES",
    "JAX_COORDINATOR_ADDRESS",
)


@pytest.fixture
def calls(monkeypatch):
    """A clean environment and a recording stand-in for ``jax.distributed.initialize``."""
    for name in (*CLUSTER_VARS, distributed.ENV_COORDINATOR, distributed.ENV_NUM_PROCESSES, distributed.ENV_PROCESS_ID):
        monkeypatch.delenv(name, raising=False)
    recorded = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: recorded.append(kwargs))
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    return recorded


def test_single_process_run_initialises_nothing(calls):
    assert initialize_distributed() is False
    assert initialize_distributed(cluster_detection=False) is False
    assert calls == []


def test_explicit_settings_are_passed_through(calls):
    assert initialize_distributed("10.0.0.1:1234", 4, 3, local_device_ids=[0], initialization_timeout=7) is True
    assert calls == [
        dict(
            coordinator_address="10.0.0.1:1234",
            num_processes=4,
            process_id=3,
            local_device_ids=[0],
            initialization_timeout=7,
        )
    ]


def test_settings_from_environment(calls, monkeypatch):
    monkeypatch.setenv("STEPJAX_COORDINATOR", "host-0:9999")
    monkeypatch.setenv("STEPJAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("STEPJAX_PROCESS_ID", "1")
    assert initialize_distributed() is True
    assert calls[0]["coordinator_address"] == "host-0:9999"
    assert (calls[0]["num_processes"], calls[0]["process_id"]) == (2, 1)


def test_arguments_override_environment(calls, monkeypatch):
    monkeypatch.setenv("STEPJAX_COORDINATOR", "host-0:9999")
    monkeypatch.setenv("STEPJAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("STEPJAX_PROCESS_ID", "1")
    initialize_distributed(process_id=0)
    assert calls[0]["process_id"] == 0


@pytest.mark.parametrize(
    ("kwargs", "missing"),
    [
        (dict(coordinator_address="h:1"), "num_processes"),
        (dict(num_processes=2, process_id=0), "coordinator_address"),
        (dict(coordinator_address="h:1", num_processes=2), "process_id"),
    ],
)
def test_partial_settings_name_what_is_missing(calls, kwargs, missing):
    with pytest.raises(DistributedConfigError, match=f"incomplete.*{missing}"):
        initialize_distributed(**kwargs)
    assert calls == []


def test_partial_environment_names_the_variable(calls, monkeypatch):
    monkeypatch.setenv("STEPJAX_COORDINATOR", "h:1")
    monkeypatch.setenv("STEPJAX_NUM_PROCESSES", "2")
    with pytest.raises(DistributedConfigError, match="STEPJAX_PROCESS_ID"):
        initialize_distributed()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(coordinator_address="no-port", num_processes=2, process_id=0), "host:port"),
        (dict(coordinator_address="h:http", num_processes=2, process_id=0), "host:port"),
        (dict(coordinator_address="h:1", num_processes=0, process_id=0), "num_processes"),
        (dict(coordinator_address="h:1", num_processes=2, process_id=2), "process_id"),
        (dict(coordinator_address="h:1", num_processes=2, process_id=-1), "process_id"),
    ],
)
def test_malformed_settings_are_refused(calls, kwargs, message):
    with pytest.raises(DistributedConfigError, match=message):
        initialize_distributed(**kwargs)
    assert calls == []


def test_non_integer_environment_value_is_named(calls, monkeypatch):
    monkeypatch.setenv("STEPJAX_NUM_PROCESSES", "two")
    with pytest.raises(DistributedConfigError, match="STEPJAX_NUM_PROCESSES='two'"):
        initialize_distributed()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"SLURM_JOB_ID": "7", "SLURM_PROCID": "0", "SLURM_NTASKS": "4"}, 4),
        ({"SLURM_JOB_ID": "7", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, 1),
        ({"SLURM_NTASKS": "4"}, None),  # not inside a Slurm job step
        ({"OMPI_COMM_WORLD_SIZE": "8"}, 8),
        ({"TPU_WORKER_HOSTNAMES": "t0,t1,t2,t3"}, 4),
        ({"TPU_WORKER_HOSTNAMES": "localhost"}, 1),
    ],
)
def test_expected_process_count_from_launchers(calls, monkeypatch, env, expected):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert expected_process_count() == expected


def test_cluster_launch_falls_through_to_jax_detection(calls, monkeypatch):
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    assert initialize_distributed() is True
    assert calls == [dict(local_device_ids=None, initialization_timeout=300)]  # JAX fills in the rest


def test_single_task_launch_stays_single_process(calls, monkeypatch):
    for k, v in {"SLURM_JOB_ID": "7", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"}.items():
        monkeypatch.setenv(k, v)
    assert initialize_distributed() is False
    assert initialize_distributed(cluster_detection=True) is True  # forced: e.g. a TPU VM known to the metadata
    assert len(calls) == 1


def test_repeat_call_after_initialisation_checks_consistency(calls, monkeypatch):
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: True)
    # This test process is a 1-process "runtime" as far as jax.process_count/index tell.
    assert initialize_distributed() is True
    assert initialize_distributed("h:1", 1, 0) is True
    with pytest.raises(DistributedConfigError, match="already initialised with 1 processes"):
        initialize_distributed(num_processes=2)
    with pytest.raises(DistributedConfigError, match="already initialised as process 0"):
        initialize_distributed(process_id=1)
    assert calls == []


def test_process_helpers_in_a_single_process():
    assert process_count() == 1
    assert is_main_process()

"""Shared helpers for the recipe tests: load a config by name and run ``python -m recipes.run`` in a subprocess."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def load_config(name: str, variant: str):
    """``configs/<name>.py:get_config(variant)``."""
    sys.path.insert(0, str(REPO))
    module = __import__(f"configs.{name}", fromlist=["get_config"])
    return module.get_config(variant)


def run_recipe(
    *args: str,
    module: str = "recipes.run",
    timeout: int = 900,  # a hang guard: loaded 2-core machines need minutes
    devices: int = 1,
    xla_flags: str = "",
    compile_cache: bool = False,
) -> subprocess.CompletedProcess:
    """Runs ``python -m <module> *args`` from the repository root on CPU; returns the finished process.

    ``compile_cache`` shares the tests' persistent compilation cache (conftest.py) with the subprocess, which pays
    where a test runs the same programs twice (e.g. a rerun that resumes).
    """
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} {xla_flags}".strip(),
    }
    if compile_cache:
        env["JAX_COMPILATION_CACHE_DIR"] = os.environ.get("STEPJAX_TEST_JAX_CACHE", "/tmp/stepjax_jax_cache")
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )

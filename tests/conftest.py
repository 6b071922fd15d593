"""Test setup: 8 fake CPU devices (set before JAX initialises its backend), CPU only, quiet logs."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=8".strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="session")
def devices():
    devs = jax.devices()
    assert len(devs) == 8, f"tests expect 8 fake CPU devices, got {len(devs)}"
    return devs


# Compilation dominates these tests; a persistent cache lets repeated shapes (across tests and xdist workers) reuse it.
jax.config.update("jax_compilation_cache_dir", os.environ.get("STEPJAX_TEST_JAX_CACHE", "/tmp/stepjax_jax_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def pytest_configure(config):
    # Parity tests use pytest.importorskip("torch"); in CI a missing torch must fail loudly, never skip quietly.
    import importlib.util

    if os.environ.get("CI") and importlib.util.find_spec("torch") is None:
        raise pytest.UsageError("CI run without torch: install the [parity] extra (make test does this)")

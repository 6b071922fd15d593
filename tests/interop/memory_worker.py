"""Measures host memory while ``load_hf`` loads a checkpoint, in a fresh process (run by test_load_memory.py).

Usage: ``python memory_worker.py FOLDER {single,mesh,scan}``. Prints one JSON line: the checkpoint size, resident
memory after imports and JAX start-up (the baseline), the peak resident memory of the load (the kernel's high-water
mark ``VmHWM``, reset to the baseline just before loading where the kernel allows it, so it covers every transient
of the load and nothing before), and a few loaded values to check.

Not ``ru_maxrss``: Linux carries the high-water mark of the forking parent (here a pytest process holding torch)
across ``exec`` into the child's ``ru_maxrss``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    """``VmHWM``: the most resident memory this process (its current address space) has held."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def reset_peak() -> bool:
    """Resets ``VmHWM`` to the current resident size (Linux >= 4.0); False where not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def main(folder: str, mode: str) -> None:
    if mode == "mesh":
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax
    import jax.numpy as jnp
    import numpy as np

    from stepjax.interop import load_hf
    from stepjax.sharding import make_mesh

    jnp.zeros(1).block_until_ready()  # backend up
    mesh = make_mesh({"fsdp": 2, "tensor": 4}) if mode == "mesh" else None
    size = sum(p.stat().st_size for p in Path(folder).glob("*.safetensors"))
    baseline = current_rss()
    reset = reset_peak()  # else VmHWM also holds start-up peaks: the ratio can only be overstated
    start = time.perf_counter()
    cfg, model = load_hf(folder, mesh=mesh, scan_layers=mode == "scan")
    jax.block_until_ready(jax.tree.leaves(model))
    seconds = time.perf_counter() - start
    peak = peak_rss()
    after = current_rss()
    q = model.layers.attn.q_proj.kernel[...][0] if cfg.scan_layers else model.layers[0].attn.q_proj.kernel[...]
    out = dict(
        mode=mode,
        checkpoint_bytes=size,
        baseline_rss=baseline,
        peak_rss=peak,
        peak_was_reset=reset,
        rss_after=after,
        load_seconds=seconds,
        lm_head_cols=np.asarray(model.lm_head.kernel[...][:, :2]).tolist(),
        q_proj_head0=np.asarray(q[:, 0, :]).tolist(),
        devices=len(jax.devices()),
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:])

"""Peak host memory while ``load_hf`` loads a ~200 MB float32 checkpoint stays under 1.3x the checkpoint size.

Each measurement runs in a fresh process (``memory_worker.py``): resident memory after imports and JAX start-up is
the baseline; the peak resident memory (``VmHWM``) over the load bounds everything the load held at once, including
the loaded model itself (on CPU the parameters live in host memory: the ideal ratio is 1.0).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from interop_helpers import numpy_checkpoint

WORKER = Path(__file__).parent / "memory_worker.py"
REPO = Path(__file__).resolve().parents[2]
LIMIT = 1.3


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mem200")
    # 32000 x 512 embedding and head (65 MB each) + 6 layers (72 MB): 203 MB, largest tensor a third of it.
    state = numpy_checkpoint(folder, vocab=32000, hidden=512, layers=6, heads=8, kv_heads=2, head_dim=64, mlp=1536)
    expect = {
        "lm_head_cols": state["lm_head.weight"][:2].T,
        "q_proj_head0": state["model.layers.0.self_attn.q_proj.weight"][:64].T,
    }
    return folder, expect


@pytest.mark.parametrize("mode", ["single", "scan", "mesh"])
def test_peak_host_memory(checkpoint, mode):
    folder, expect = checkpoint
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    result = subprocess.run(
        [sys.executable, str(WORKER), str(folder), mode],
        cwd=REPO,
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    size = out["checkpoint_bytes"]
    assert 190e6 < size < 220e6
    ratio = (out["peak_rss"] - out["baseline_rss"]) / size
    print(
        f"{mode}: peak host memory growth {ratio:.3f}x of {size / 1e6:.0f} MB, load {out['load_seconds']:.2f}s "
        f"(peak reset at baseline: {out['peak_was_reset']})"
    )
    assert out["devices"] == (8 if mode == "mesh" else 1)
    assert ratio < LIMIT, f"{mode}: peak host memory {ratio:.2f}x the checkpoint (limit {LIMIT}x)"
    # It loaded the right values, not just little memory.
    for key, want in expect.items():
        np.testing.assert_array_equal(np.asarray(out[key], np.float32), want, err_msg=key)

"""Notebooks execute top to bottom (their code cells in one fresh process, as a kernel would run them).

No Jupyter kernel is needed: the cells are concatenated and run with this interpreter from ``notebooks/``; a failing
cell fails the test with its traceback.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


def _code(path: Path) -> str:
    cells = json.loads(path.read_text())["cells"]
    sources = ["".join(c["source"]) if isinstance(c["source"], list) else c["source"] for c in cells]
    code = [s for s, c in zip(sources, cells, strict=True) if c["cell_type"] == "code"]
    assert code, f"{path.name} has no code cells"
    return "\n\n".join(line for line in code if not line.lstrip().startswith(("!", "%")))


# Each notebook and lines its output must contain (its "test" variant runs the same cells on a tiny budget).
EXPECTED_OUTPUT = {
    "bcpg_nsa.ipynb": (
        "offline dataset:",
        "first-step gradients at pi_ref:",
        "noise-corrected cosine",
        "log-ratio to pi_ref",
        "REINFORCE vs baseline:",
    ),
    "orz_ppo_tiny.ipynb": ("before:", "after:"),
    "pdeil.ipynb": ("expert PPO:", "PDEIL: final returns", "BC: final returns", "Pearson(learned, true)"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_OUTPUT))
def test_notebook_runs(name, tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    env["STEPJAX_NOTEBOOK_VARIANT"] = "test"
    script = tmp_path / "notebook.py"
    script.write_text(_code(NOTEBOOKS / name))
    result = subprocess.run(
        [sys.executable, str(script)], cwd=NOTEBOOKS, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for line in EXPECTED_OUTPUT[name]:
        assert line in result.stdout, f"{name}: {line!r} missing from its output:\n{result.stdout[-3000:]}"


def test_every_notebook_is_tested():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(EXPECTED_OUTPUT)

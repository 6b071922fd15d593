"""``python -m recipes.merge`` on tiny Orbax checkpoints: round trips through the CLI (bit-exact 0/1, 0.5 mean, the
convert-folder layout kept, train checkpoints read), and bad input as one line with exit status 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recipes.merge import UsageError, merge
from stepjax.train.merge import MergeError, load_params, save_params, ties_merge

REPO = Path(__file__).resolve().parents[2]


def _cli(*args):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    return subprocess.run(
        [sys.executable, "-m", "recipes.merge", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )


def _params(seed):
    rng = np.random.default_rng(seed)
    return {
        "embed": {"embedding": rng.normal(size=(8, 4)).astype(np.float32)},
        "head": rng.normal(size=4).astype(np.float32),
    }


@pytest.fixture
def ckpts(tmp_path):
    paths = []
    for i in range(3):
        paths.append(save_params(tmp_path / f"m{i}", _params(i)))
    return paths


def _arrays(path):
    tree, _ = load_params(path)
    return np.asarray(tree["embed"]["embedding"]), np.asarray(tree["head"])


def test_cli_linear_round_trip(tmp_path, ckpts):
    a, b = str(ckpts[0]), str(ckpts[1])
    res = _cli("--method", "linear", "--models", f"{a},{b}", "--weights", "0.5,0.5", "--out", str(tmp_path / "mean"))
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("merged 2 models (linear)")
    got = _arrays(tmp_path / "mean")
    for g, x, y in zip(got, _arrays(a), _arrays(b), strict=True):
        np.testing.assert_array_equal(g, (x + y) / 2)
    merge("linear", [a, b], str(tmp_path / "first"), weights=["1", "0"])
    for g, x in zip(_arrays(tmp_path / "first"), _arrays(a), strict=True):
        assert g.tobytes() == x.tobytes()


def test_other_methods_and_layouts(tmp_path, ckpts):
    base, m1, m2 = (str(p) for p in ckpts)
    merge("task_arithmetic", [m1, m2], str(tmp_path / "ta"), base=base, weights=["1", "0.5"])
    (_, b_h), (e1, h1), (_, h2) = _arrays(base), _arrays(m1), _arrays(m2)
    np.testing.assert_allclose(_arrays(tmp_path / "ta")[1], b_h + (h1 - b_h) + 0.5 * (h2 - b_h), rtol=1e-6)
    merge("slerp", [m1, m2], str(tmp_path / "slerp"), t=0.0)
    assert _arrays(tmp_path / "slerp")[0].tobytes() == e1.tobytes()
    merge("ties", [m1, m2], str(tmp_path / "ties"), base=base, density=0.5)
    want = ties_merge(load_params(base)[0], [load_params(m1)[0], load_params(m2)[0]], density=0.5)
    np.testing.assert_array_equal(_arrays(tmp_path / "ties")[0], want["embed"]["embedding"])
    # The convert layout (params/ + stepjax_config.json + side files) is kept.
    folder = tmp_path / "folder"
    save_params(folder / "params", _params(5))
    (folder / "stepjax_config.json").write_text(json.dumps({"hidden_size": 4}))
    merge("linear", [str(folder), str(folder)], str(tmp_path / "fout"), weights=["0.5", "0.5"])
    assert sorted(p.name for p in (tmp_path / "fout").iterdir()) == ["params", "stepjax_config.json"]
    assert _arrays(tmp_path / "fout")[1].tobytes() == _params(5)["head"].tobytes()
    # A train checkpoint (CheckpointManager layout) contributes its params.
    from stepjax.train import CheckpointManager

    with CheckpointManager(tmp_path / "run") as mgr:
        mgr.save(7, {"params": _params(1), "step": np.int32(7)}, force=True, wait=True)
    merge("linear", [str(tmp_path / "run"), m2], str(tmp_path / "tout"), weights=["1", "0"])
    assert _arrays(tmp_path / "tout")[1].tobytes() == h1.tobytes()


def test_bad_input_is_one_line_and_exit_2(tmp_path, ckpts):
    a, b = str(ckpts[0]), str(ckpts[1])
    res = _cli("--method", "ties", "--models", f"{a},{b}", "--out", str(tmp_path / "x"))
    assert res.returncode == 2 and res.stderr.strip() == "error: --method ties needs --base"
    cases = [
        (dict(method="linear", models=[a, b], weights=["1"]), UsageError, "1 entries for 2 --models"),
        (dict(method="linear", models=[a, b], weights=["x", "1"]), UsageError, "must be numbers"),
        (dict(method="slerp", models=[a], t=0.5), UsageError, "exactly 2 --models"),
        (dict(method="linear", models=[a, str(tmp_path / "nope")], weights=["1", "1"]), FileNotFoundError, "nope"),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            merge(out=str(tmp_path / "y"), **kwargs)
    save_params(
        tmp_path / "other", {"embed": {"embedding": np.zeros((8, 5), np.float32)}, "head": np.zeros(4, np.float32)}
    )
    with pytest.raises(MergeError, match=r"parameter embed/embedding is float32\[8, 5\], expected float32\[8, 4\]"):
        merge("linear", [a, str(tmp_path / "other")], str(tmp_path / "z"), weights=["1", "1"])
    assert not (tmp_path / "z").exists()

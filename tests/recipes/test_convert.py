"""``python -m recipes.convert``: Hugging Face folder -> Orbax -> Hugging Face folder is bit-exact and carries the
tokenizer files and extra config fields; bad input is one line on stderr and exit status 2."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.numpy import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "interop"))
from interop_helpers import numpy_checkpoint

from recipes.convert import convert

REPO = Path(__file__).resolve().parents[2]


def _cli(*args):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    return subprocess.run(
        [sys.executable, "-m", "recipes.convert", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture
def hf_folder(tmp_path):
    folder = tmp_path / "hf"
    state = numpy_checkpoint(folder, model_type="qwen3", heads=4, kv_heads=2, head_dim=16)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "bos_token_id": 5, "eos_token_id": 7}))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
    (folder / "chat_template.jinja").write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    return folder, state


def test_round_trip_through_orbax_is_bit_exact(tmp_path, hf_folder):
    src, state = hf_folder
    first = _cli("--from", "hf", "--src", str(src), "--dst", str(tmp_path / "ckpt"))
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("converted hf")
    names = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert names == ["chat_template.jinja", "hf_config.json", "params", "stepjax_config.json", "tokenizer_config.json"]
    second = _cli("--from", "orbax", "--src", str(tmp_path / "ckpt"), "--dst", str(tmp_path / "back"))
    assert second.returncode == 0, second.stderr
    back = load_file(str(tmp_path / "back" / "model.safetensors"))
    assert sorted(back) == sorted(state)
    for name, want in state.items():
        assert back[name].dtype == want.dtype and back[name].tobytes() == want.tobytes(), name
    config = json.loads((tmp_path / "back" / "config.json").read_text())
    assert (config["model_type"], config["bos_token_id"], config["eos_token_id"]) == ("qwen3", 5, 7)
    assert (tmp_path / "back" / "chat_template.jinja").read_text() == (src / "chat_template.jinja").read_text()


def test_bad_input_is_one_line_and_exit_2(tmp_path, hf_folder):
    src, _ = hf_folder
    missing = _cli("--from", "hf", "--src", str(tmp_path / "nowhere"), "--dst", str(tmp_path / "out"))
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [f"error: --src {tmp_path / 'nowhere'} is not a folder"]
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "hidden_act": "gelu"}))
    unsupported = _cli("--from", "hf", "--src", str(src), "--dst", str(tmp_path / "out"))
    assert unsupported.returncode == 2
    lines = unsupported.stderr.strip().splitlines()
    assert len(lines) == 1 and "'hidden_act'" in lines[0], unsupported.stderr
    assert not (tmp_path / "out").exists()


def test_convert_errors_in_process(tmp_path, hf_folder):
    from stepjax.interop import InteropError

    src, state = hf_folder
    with pytest.raises(FileNotFoundError, match="use --from hf"):
        convert("orbax", str(src), str(tmp_path / "out"))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("keep")
    with pytest.raises(FileExistsError, match="overwrite"):
        convert("hf", str(src), str(tmp_path / "out"))
    assert (tmp_path / "out" / "x").read_text() == "keep"
    summary = convert("hf", str(src), str(tmp_path / "out"), overwrite=True, dtype="bfloat16")
    assert "bfloat16" in summary and (tmp_path / "out" / "params").is_dir()
    del state["model.norm.weight"]
    from safetensors.numpy import save_file

    save_file(state, str(src / "model.safetensors"))
    with pytest.raises(InteropError, match=r"missing tensor 'model\.norm\.weight'"):
        convert("hf", str(src), str(tmp_path / "out2"))

"""``save_hf`` folders load in transformers with the same logits; safetensors -> Orbax -> safetensors is bit-exact."""

import copy
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).parent))
from interop_helpers import VOCAB, hf_logits, hf_model

from stepjax.interop import load_hf, load_orbax_params, save_hf, save_orbax_params

pytestmark = pytest.mark.parity


def _tensors(folder: Path) -> dict[str, tuple[str, tuple, bytes]]:
    """``{name: (dtype, shape, raw bytes)}`` of every tensor in a folder (single file or shards)."""
    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                t = f.get_tensor(name)
                out[name] = (str(t.dtype), tuple(t.shape), t.contiguous().view(torch.uint8).numpy().tobytes())
    return out


@pytest.mark.parametrize(
    "case, scan", [("llama_gqa7", False), ("llama3_rope", False), ("qwen2_tied", True), ("qwen3_odd", False)]
)
def test_export_reloads_in_transformers(tmp_path, case, scan):
    hf = hf_model(case)
    hf.save_pretrained(tmp_path / "src", safe_serialization=True)
    cfg, model = load_hf(tmp_path / "src", scan_layers=scan)
    original = json.loads((tmp_path / "src" / "config.json").read_text())
    save_hf(tmp_path / "out", cfg, model, max_shard_size="40KB", extra_config=original)
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert "model.safetensors.index.json" in files and "model-00001-of-" in files[1], files
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
    assert type(reloaded) is type(hf)
    for key in ("num_key_value_heads", "tie_word_embeddings", "rms_norm_eps", "vocab_size", "model_type"):
        assert getattr(reloaded.config, key) == getattr(hf.config, key), key
    assert reloaded.config.rope_parameters == hf.config.rope_parameters
    tokens = np.random.default_rng(0).integers(0, VOCAB, size=(2, 16))
    np.testing.assert_array_equal(hf_logits(reloaded, tokens), hf_logits(hf, tokens))
    # Same tensors as transformers wrote, bit for bit (exported layer by layer, across shard files).
    assert _tensors(tmp_path / "out") == _tensors(tmp_path / "src")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_safetensors_orbax_safetensors_is_bit_exact(tmp_path, dtype):
    hf = hf_model("qwen2_tied")
    # A copy: .to() also casts buffers (RoPE inv_freq), which would corrupt the shared float32 model.
    copy.deepcopy(hf).to(dtype).save_pretrained(tmp_path / "src", safe_serialization=True)
    cfg, model = load_hf(tmp_path / "src")
    save_orbax_params(tmp_path / "orbax", cfg, model)
    cfg2, restored = load_orbax_params(tmp_path / "orbax")
    assert cfg2 == cfg
    save_hf(tmp_path / "back", cfg2, restored)
    want, got = _tensors(tmp_path / "src"), _tensors(tmp_path / "back")
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name] == want[name], name  # dtype, shape and every byte
    assert {dt for dt, _, _ in got.values()} == {str(dtype)}

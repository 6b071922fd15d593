"""Bad checkpoints and configs are named (tensor, field, file); failed exports leave nothing half-written."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

sys.path.insert(0, str(Path(__file__).parent))
from interop_helpers import numpy_checkpoint

import stepjax.interop.save as save_module
from stepjax.interop import InteropError, load_hf, load_orbax_params, save_hf, save_orbax_params


@pytest.fixture
def folder(tmp_path):
    path = tmp_path / "model"
    state = numpy_checkpoint(path, heads=4, kv_heads=2, head_dim=16)
    return path, state


def _edit_config(path: Path, **changes):
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


def _rewrite(path: Path, state: dict):
    save_file(state, str(path / "model.safetensors"))


def test_missing_tensor_is_named(folder):
    path, state = folder
    del state["model.layers.1.mlp.up_proj.weight"]
    _rewrite(path, state)
    with pytest.raises(InteropError, match=r"missing tensor 'model\.layers\.1\.mlp\.up_proj\.weight'"):
        load_hf(path)


def test_shape_mismatch_names_tensor_and_shapes(folder):
    path, _ = folder
    _edit_config(path, num_key_value_heads=4)  # the checkpoint has 2 KV heads
    with pytest.raises(InteropError, match=r"'model\.layers\.0\.self_attn\.k_proj\.weight'.*\[32, 64\].*\[64, 64\]"):
        load_hf(path)


def test_unexpected_tensors_are_named_unless_not_strict(folder):
    path, state = folder
    state["model.layers.0.self_attn.q_norm.weight"] = np.ones(16, np.float32)  # a Qwen3 tensor in a Llama config
    _rewrite(path, state)
    with pytest.raises(InteropError, match=r"unexpected tensors \['model\.layers\.0\.self_attn\.q_norm\.weight'\]"):
        load_hf(path)
    cfg, model = load_hf(path, strict=False)
    assert not cfg.qk_norm and model.layers[0].attn.q_norm is None


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"model_type": "mistral"}, "'model_type' 'mistral'"),
        ({"architectures": ["LlamaForSequenceClassification"]}, "'architectures'"),
        ({"hidden_act": "gelu"}, "'hidden_act'"),
        ({"quantization_config": {"quant_method": "gptq", "bits": 4}}, "'quantization_config'"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "'rope_scaling'"),
        ({"use_sliding_window": True}, "'use_sliding_window'"),
        ({"attention_bias": True}, "'attention_bias'"),
    ],
)
def test_unsupported_config_fields_are_named(folder, changes, field):
    path, _ = folder
    _edit_config(path, **changes)
    with pytest.raises(InteropError, match=f"config.json.*{field}"):
        load_hf(path)


def test_tied_config_with_a_different_head_is_refused(folder):
    path, _ = folder
    _edit_config(path, tie_word_embeddings=True)  # the checkpoint's lm_head differs from the embedding
    with pytest.raises(InteropError, match=r"'lm_head\.weight' differs from 'model\.embed_tokens\.weight'"):
        load_hf(path)


def test_missing_files(tmp_path, folder):
    path, _ = folder
    (path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        load_hf(path)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        load_hf(tmp_path / "nowhere")
    with pytest.raises(TypeError, match="compute_dtype"):
        load_hf(path, dtype="float32", **{"param_dtype": "bfloat16"})


def test_failed_export_leaves_nothing_and_keeps_the_old_folder(tmp_path, folder, monkeypatch):
    path, _ = folder
    cfg, model = load_hf(path)
    dst = tmp_path / "export"
    calls = []
    real = save_module.write_safetensors

    def failing(file, tensors, metadata=None):
        calls.append(file)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        return real(file, tensors, metadata)

    monkeypatch.setattr(save_module, "write_safetensors", failing)
    with pytest.raises(OSError, match="simulated"):
        save_hf(dst, cfg, model, max_shard_size="20KB")
    assert len(calls) == 2 and calls[0].parent.name.startswith(".export.tmp-")  # it did write a first shard
    assert not dst.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary folder left either

    dst.mkdir()
    (dst / "keep.txt").write_text("previous export")
    with pytest.raises(FileExistsError, match="overwrite"):
        save_hf(dst, cfg, model)
    calls.clear()
    with pytest.raises(OSError, match="simulated"):
        save_hf(dst, cfg, model, max_shard_size="20KB", overwrite=True)
    assert sorted(p.name for p in dst.iterdir()) == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "model"]

    monkeypatch.setattr(save_module, "write_safetensors", real)
    save_hf(dst, cfg, model, overwrite=True)
    assert sorted(p.name for p in dst.iterdir()) == ["config.json", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "model"]


def test_failed_orbax_save_leaves_nothing(tmp_path, folder, monkeypatch):
    path, _ = folder
    cfg, model = load_hf(path)
    import stepjax.interop.orbax_io as orbax_io

    def failing(*args, **kwargs):
        raise OSError("simulated")

    monkeypatch.setattr(orbax_io, "config_to_json", failing)  # fails after the arrays are written
    with pytest.raises(OSError, match="simulated"):
        save_orbax_params(tmp_path / "ckpt", cfg, model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_export_errors_name_the_field_or_parameter(tmp_path, folder):
    path, _ = folder
    cfg, model = load_hf(path)
    with pytest.raises(InteropError, match=r"LLMConfig\.norm='layer'"):
        save_hf(tmp_path / "a", cfg.replace(norm="layer"), model)
    with pytest.raises(InteropError, match=r"LLMConfig\.position='sqrt_alibi'"):
        save_hf(tmp_path / "a", cfg.replace(position="sqrt_alibi"), model)
    with pytest.raises(
        InteropError, match=r"parameter layers/0/mlp/gate_proj/kernel has shape \[64, 96\], expected \[64, 128\]"
    ):
        save_hf(tmp_path / "a", cfg.replace(mlp_dim=128), model)
    with pytest.raises(InteropError, match=r"unexpected \['lm_head/kernel'\]"):
        save_hf(tmp_path / "a", cfg.replace(tie_embeddings=True), model)
    with pytest.raises(InteropError, match="max_shard_size"):
        save_hf(tmp_path / "a", cfg, model, max_shard_size="lots")
    assert not (tmp_path / "a").exists()


def test_orbax_restore_refuses_layout_changes(tmp_path, folder):
    path, _ = folder
    cfg, model = load_hf(path)
    save_orbax_params(tmp_path / "ckpt", cfg, model)
    with pytest.raises(InteropError, match=r"change parameter layers"):
        load_orbax_params(tmp_path / "ckpt", scan_layers=True)
    cfg2, _ = load_orbax_params(tmp_path / "ckpt", remat="full")
    assert cfg2 == cfg.replace(remat="full")
    (tmp_path / "ckpt" / "stepjax_config.json").write_text(
        json.dumps({**json.loads((tmp_path / "ckpt" / "stepjax_config.json").read_text()), "num_experts": 4})
    )
    with pytest.raises(InteropError, match=r"unknown LLMConfig fields \['num_experts'\]"):
        load_orbax_params(tmp_path / "ckpt")

"""The streaming key map (``tensor_mappings``, ``Transform.hf_view``) agrees with the in-memory one, and
``config_to_hf`` inverts ``config_from_hf``."""

import numpy as np
import pytest

from stepjax.models.llm import LLMConfig, llm_preset
from stepjax.models.llm.params import TRANSFORMS, config_from_hf, config_to_hf, hf_to_params, tensor_mappings


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_hf_view_writes_the_stepjax_layout(name):
    transform = TRANSFORMS[name]
    shape = {"identity": (6, 4), "transpose": (6, 4), "split_heads_bias": (3, 4)}.get(name, (6, 3, 4))
    if name == "split_heads_out":
        shape = (3, 4, 6)
    hf = np.random.default_rng(0).standard_normal(transform.hf_shape(shape))
    dest = np.zeros(shape)
    view = transform.hf_view(dest)
    assert view.shape == hf.shape and np.shares_memory(view, dest)
    view[...] = hf
    np.testing.assert_array_equal(dest, transform.to_stepjax(hf, shape))
    np.testing.assert_array_equal(transform.to_hf(dest, shape), hf)


@pytest.mark.parametrize("scan", [False, True])
def test_tensor_mappings_cover_every_parameter(scan):
    cfg = LLMConfig(
        vocab_size=32,
        hidden_size=16,
        num_layers=3,
        num_heads=4,
        num_kv_heads=2,
        mlp_dim=24,
        qk_norm=True,
        scan_layers=scan,
    )
    mappings = tensor_mappings(cfg)
    assert len(mappings) == 3 + 3 * 11  # embed, norm, head + 11 tensors per Qwen3 layer
    rng = np.random.default_rng(0)
    state = {m.hf_name: rng.standard_normal(m.hf_shape).astype(np.float32) for m in mappings}
    params = hf_to_params(state, cfg)
    for m in mappings:
        node = params
        for key in m.model_path(scan):
            node = node[key]
        got = node[m.layer] if scan and m.layer is not None else node
        np.testing.assert_array_equal(got, m.transform.to_stepjax(state[m.hf_name], m.shape), err_msg=m.hf_name)


@pytest.mark.parametrize(
    "cfg",
    [
        llm_preset("llama3_1b"),  # llama3 rope scaling, tied
        llm_preset("qwen2p5_0p5b"),  # qkv bias, tied, theta 1e6
        llm_preset("tiny").replace(qk_norm=True, head_dim=32, param_dtype="bfloat16", dtype="bfloat16"),
    ],
)
def test_config_round_trip(cfg):
    hf = config_to_hf(cfg, {"bos_token_id": 1, "torch_dtype": "float16", "rope_theta": 3.0})
    assert hf["bos_token_id"] == 1 and hf["dtype"] == hf["torch_dtype"] == cfg.param_dtype
    assert hf["rope_parameters"]["rope_theta"] == hf["rope_theta"] == cfg.rope_theta  # stale extras replaced
    assert hf["architectures"] == [
        {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}[hf["model_type"]]
    ]
    back = config_from_hf(hf, param_dtype=cfg.param_dtype, dtype=cfg.dtype)
    scaling = dict(cfg.rope_scaling or {})
    if "type" in scaling:  # presets use the old spelling; exported configs the current one
        scaling["rope_type"] = scaling.pop("type")
    assert back == cfg.replace(rope_scaling=scaling or None)


def test_config_without_hf_family_names_the_field():
    with pytest.raises(ValueError, match=r"LLMConfig\.mlp_kind='gelu'"):
        config_to_hf(llm_preset("tiny").replace(mlp_kind="gelu"))
    with pytest.raises(ValueError, match=r"qkv_bias and LLMConfig\.qk_norm"):
        config_to_hf(llm_preset("tiny").replace(qkv_bias=True, qk_norm=True))

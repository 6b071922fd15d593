"""Hugging Face <-> stepjax weight-name map: layouts, round trips, scan stacking, config.json, and named errors."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from stepjax.models.llm import DecoderLM, LLMConfig
from stepjax.models.llm.params import config_from_hf, hf_to_params, load_params_into, params_to_hf

D, N, KV, H, F, V, L = 16, 4, 2, 8, 24, 32, 2


def _cfg(**overrides) -> LLMConfig:
    base = dict(vocab_size=V, hidden_size=D, num_layers=L, num_heads=N, num_kv_heads=KV, mlp_dim=F, head_dim=H)
    return LLMConfig(**{**base, **overrides})


def _abstract(cfg: LLMConfig) -> DecoderLM:
    """The model's structure without initialising it (parameters are ShapeDtypeStructs until loaded)."""
    return nnx.eval_shape(lambda: DecoderLM(cfg, rngs=nnx.Rngs(0)))


def _hf_state(*, bias: bool = False, qk_norm: bool = False, tied: bool = False, seed: int = 0) -> dict:
    """A Hugging Face Llama/Qwen state dict with the published names and torch [out, in] shapes."""
    rng = np.random.default_rng(seed)
    shapes = {"model.embed_tokens.weight": (V, D), "model.norm.weight": (D,)}
    if not tied:
        shapes["lm_head.weight"] = (V, D)
    for i in range(L):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (D,),
            p + "post_attention_layernorm.weight": (D,),
            p + "self_attn.q_proj.weight": (N * H, D),
            p + "self_attn.k_proj.weight": (KV * H, D),
            p + "self_attn.v_proj.weight": (KV * H, D),
            p + "self_attn.o_proj.weight": (D, N * H),
            p + "mlp.gate_proj.weight": (F, D),
            p + "mlp.up_proj.weight": (F, D),
            p + "mlp.down_proj.weight": (D, F),
        }
        if bias:
            shapes |= {p + f"self_attn.{x}_proj.bias": ((N if x == "q" else KV) * H,) for x in "qkv"}
        if qk_norm:
            shapes |= {p + "self_attn.q_norm.weight": (H,), p + "self_attn.k_norm.weight": (H,)}
    return {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}


FAMILIES = {
    "llama": (dict(), dict()),
    "qwen2": (dict(qkv_bias=True, tie_embeddings=True), dict(bias=True, tied=True)),
    "qwen3": (dict(qk_norm=True), dict(qk_norm=True)),
}


def test_layouts_follow_torch_linear_convention():
    sd = _hf_state(bias=True)
    p = hf_to_params(sd, _cfg(qkv_bias=True))
    layer = p["layers"][1]
    wq, wo = sd["model.layers.1.self_attn.q_proj.weight"], sd["model.layers.1.self_attn.o_proj.weight"]
    n, h, d = 2, 5, 7
    # q = x @ Wq.T: query head n, channel h is output row n*H + h.
    assert layer["attn"]["q_proj"]["kernel"].shape == (D, N, H)
    assert layer["attn"]["q_proj"]["kernel"][d, n, h] == wq[n * H + h, d]
    assert layer["attn"]["k_proj"]["kernel"].shape == (D, KV, H)
    assert layer["attn"]["q_proj"]["bias"][n, h] == sd["model.layers.1.self_attn.q_proj.bias"][n * H + h]
    assert layer["attn"]["o_proj"]["kernel"].shape == (N, H, D)
    assert layer["attn"]["o_proj"]["kernel"][n, h, d] == wo[d, n * H + h]
    np.testing.assert_array_equal(layer["mlp"]["down_proj"]["kernel"], sd["model.layers.1.mlp.down_proj.weight"].T)
    np.testing.assert_array_equal(layer["input_norm"]["scale"], sd["model.layers.1.input_layernorm.weight"])
    np.testing.assert_array_equal(p["lm_head"]["kernel"], sd["lm_head.weight"].T)
    np.testing.assert_array_equal(p["embed"]["embedding"], sd["model.embed_tokens.weight"])


@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_round_trip_and_load(family, scan):
    cfg_kw, sd_kw = FAMILIES[family]
    cfg = _cfg(scan_layers=scan, **cfg_kw)
    sd = _hf_state(**sd_kw)
    params = hf_to_params(sd, cfg)
    back = params_to_hf(params, cfg)
    assert set(back) == set(sd)
    for k in sd:
        np.testing.assert_array_equal(back[k], sd[k], err_msg=k)
    model = load_params_into(_abstract(cfg), params)
    # The model now holds exactly these tensors: exporting the model's own state gives the state dict back.
    from_model = params_to_hf(nnx.state(model, nnx.Param), cfg)
    for k in sd:
        np.testing.assert_array_equal(from_model[k], sd[k], err_msg=k)


def test_scan_layout_stacks_layers_on_a_leading_axis():
    sd = _hf_state(qk_norm=True)
    flat = hf_to_params(sd, _cfg(qk_norm=True))
    stacked = hf_to_params(sd, _cfg(qk_norm=True, scan_layers=True))
    assert stacked["layers"]["attn"]["q_proj"]["kernel"].shape == (L, D, N, H)
    for i in range(L):
        np.testing.assert_array_equal(
            stacked["layers"]["attn"]["q_norm"]["scale"][i], flat["layers"][i]["attn"]["q_norm"]["scale"]
        )
        np.testing.assert_array_equal(
            stacked["layers"]["mlp"]["up_proj"]["kernel"][i], flat["layers"][i]["mlp"]["up_proj"]["kernel"]
        )


def test_params_cast_to_param_dtype():
    params = hf_to_params(_hf_state(), _cfg(param_dtype="bfloat16"))
    assert params["embed"]["embedding"].dtype == jnp.bfloat16
    model = load_params_into(DecoderLM(_cfg(param_dtype="bfloat16"), rngs=nnx.Rngs(0)), params)
    assert model.embed.embedding[...].dtype == jnp.bfloat16
    # Loading keeps the sharding metadata.
    assert model.layers[0].attn.q_proj.kernel.get_metadata()["logical_axes"] == ("embed", "heads", "head_dim")


def test_tied_checkpoint_may_list_the_head_only_if_equal():
    sd = _hf_state(tied=True)
    cfg = _cfg(tie_embeddings=True)
    assert "lm_head" not in hf_to_params({**sd, "lm_head.weight": sd["model.embed_tokens.weight"]}, cfg)
    with pytest.raises(ValueError, match=r"lm_head\.weight"):
        hf_to_params({**sd, "lm_head.weight": sd["model.embed_tokens.weight"] + 1.0}, cfg)


def test_missing_tensor_is_named():
    sd = _hf_state()
    del sd["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        hf_to_params(sd, _cfg())
    with pytest.raises(ValueError, match=r"q_proj\.bias"):  # qwen2 config, llama checkpoint
        hf_to_params(_hf_state(), _cfg(qkv_bias=True))


def test_shape_mismatch_is_named():
    sd = _hf_state()
    sd["model.layers.0.self_attn.k_proj.weight"] = np.zeros((N * H, D), np.float32)  # MHA-shaped K in a GQA config
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.k_proj\.weight.*shape"):
        hf_to_params(sd, _cfg())


def test_unexpected_tensor_is_named_unless_not_strict():
    sd = _hf_state(qk_norm=True)  # qwen3 checkpoint, llama config
    with pytest.raises(ValueError, match=r"q_norm\.weight"):
        hf_to_params(sd, _cfg())
    assert "q_norm" not in hf_to_params(sd, _cfg(), strict=False)["layers"][0]["attn"]
    # Old checkpoints persisted the RoPE buffer; it carries no parameter.
    hf_to_params({**_hf_state(), "model.layers.0.self_attn.rotary_emb.inv_freq": np.ones(H // 2)}, _cfg())


def test_configs_without_hf_equivalent_are_rejected():
    with pytest.raises(ValueError, match="input_norm/bias"):  # LayerNorm biases have no Llama-family name
        hf_to_params(_hf_state(), _cfg(norm="layer"))
    with pytest.raises(ValueError, match=r"gate_proj\.weight"):  # a plain GELU MLP has no gate
        hf_to_params(_hf_state(), _cfg(mlp_kind="gelu"))


def test_load_params_into_checks_structure_and_shapes():
    cfg = _cfg()
    params = hf_to_params(_hf_state(), cfg)
    with pytest.raises(ValueError, match="embed/embedding"):
        load_params_into(_abstract(cfg.replace(vocab_size=V + 1)), params)
    with pytest.raises(ValueError, match="lm_head"):
        load_params_into(_abstract(cfg.replace(tie_embeddings=True)), params)


# ------------------------------------------------------------------------------------------ config.json

LLAMA_JSON = {
    "model_type": "llama",
    "vocab_size": 128256,
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    "tie_word_embeddings": True,
    "max_position_embeddings": 131072,
    "attention_bias": False,
    "mlp_bias": False,
    "hidden_act": "silu",
}


def test_config_from_llama_json():
    cfg = config_from_hf(LLAMA_JSON)
    assert (cfg.vocab_size, cfg.hidden_size, cfg.mlp_dim, cfg.num_layers) == (128256, 2048, 8192, 16)
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (32, 8, 64)
    assert cfg.norm_eps == 1e-5 and cfg.rope_theta == 500000.0 and cfg.max_seq_len == 131072
    assert cfg.tie_embeddings and not cfg.qkv_bias and not cfg.qk_norm
    assert dict(cfg.rope_scaling)["factor"] == 32.0 and dict(cfg.rope_scaling)["rope_type"] == "llama3"
    assert config_from_hf(LLAMA_JSON, scan_layers=True).scan_layers


def test_config_reads_transformers5_rope_parameters():
    new = {k: v for k, v in LLAMA_JSON.items() if k not in ("rope_theta", "rope_scaling")}
    new["rope_parameters"] = {**LLAMA_JSON["rope_scaling"], "rope_theta": 500000.0}
    assert config_from_hf(new) == config_from_hf(LLAMA_JSON)
    default = {**new, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}}
    cfg = config_from_hf(default)
    assert cfg.rope_scaling is None and cfg.rope_theta == 1e6


def test_config_from_qwen_json():
    qwen2 = {
        "model_type": "qwen2",
        "vocab_size": 151936,
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "rope_theta": 1e6,
        "tie_word_embeddings": True,
        "use_sliding_window": False,
        "rms_norm_eps": 1e-6,
    }
    cfg = config_from_hf(qwen2)
    assert cfg.qkv_bias and not cfg.qk_norm and cfg.head_dim == 64 and cfg.tie_embeddings and cfg.rope_theta == 1e6
    qwen3 = {**qwen2, "model_type": "qwen3", "head_dim": 128, "attention_bias": False, "tie_word_embeddings": False}
    cfg = config_from_hf(qwen3)
    assert cfg.qk_norm and not cfg.qkv_bias and cfg.head_dim == 128 and not cfg.tie_embeddings
    assert config_from_hf({**qwen2, "num_key_value_heads": None}).num_kv_heads == 14


@pytest.mark.parametrize(
    "change, field",
    [
        ({"model_type": "mistral"}, "model_type"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"attention_bias": True}, "attention_bias"),
        ({"mlp_bias": True}, "mlp_bias"),
        ({"use_sliding_window": True}, "sliding"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling"),
        ({"intermediate_size": None}, "intermediate_size"),
    ],
)
def test_config_errors_name_the_field(change, field):
    with pytest.raises(ValueError, match=field):
        config_from_hf({**LLAMA_JSON, **change})

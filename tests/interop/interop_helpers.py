"""Tiny random Hugging Face checkpoints for the interop tests: built here with transformers or numpy, never
downloaded."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

VOCAB = 96
_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    attn_implementation="eager",
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=None,
)

#: name -> (transformers config class, model class, config fields)
CASES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(rms_norm_eps=1e-5)),
    # GQA 7:1, an odd head count, head_dim 8, rope theta 1e6.
    "llama_gqa7": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(hidden_size=56, num_attention_heads=7, num_key_value_heads=1, rope_theta=1e6),
    ),
    # Llama 3.1 frequency scaling, with a short original context so all three frequency bands occur.
    "llama3_rope": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(
            rope_theta=500_000.0,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
        ),
    ),
    # Qwen2.5: q/k/v biases, tied embeddings.
    "qwen2_tied": ("Qwen2Config", "Qwen2ForCausalLM", dict(rope_theta=1e6, tie_word_embeddings=True)),
    # Qwen3: qk-norm; 5 query heads on 1 KV head, head_dim 12 decoupled from hidden / heads.
    "qwen3_odd": (
        "Qwen3Config",
        "Qwen3ForCausalLM",
        dict(hidden_size=48, num_attention_heads=5, num_key_value_heads=1, head_dim=12, rope_theta=1e6),
    ),
}


@functools.cache
def hf_model(case: str):
    """A transformers model with every parameter random (HF zero-inits biases and one-inits norms, which would
    hide layout errors), in eval mode."""
    import torch
    import transformers

    config_cls, model_cls, extra = CASES[case]
    config = getattr(transformers, config_cls)(**{**_COMMON, **extra})
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(config).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1.0 + 0.2 * noise if "norm" in name else 0.1 * noise)
    return model


def hf_logits(model, tokens: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(np.asarray(tokens, np.int64))).logits.float().numpy()


def numpy_checkpoint(
    folder: Path,
    *,
    model_type: str = "llama",
    vocab: int = 96,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 8,
    kv_heads: int = 4,
    head_dim: int = 8,
    mlp: int = 96,
    tied: bool = False,
    dtype=np.float32,
    seed: int = 0,
    scale: float = 0.1,
) -> dict[str, np.ndarray]:
    """Writes a random Llama/Qwen-layout folder (``config.json`` + ``model.safetensors``) with numpy and the
    ``safetensors`` package only (no torch); returns the state dict."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    if not tied:
        shapes["lm_head.weight"] = (vocab, hidden)
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (hidden,),
            p + "post_attention_layernorm.weight": (hidden,),
            p + "self_attn.q_proj.weight": (heads * head_dim, hidden),
            p + "self_attn.k_proj.weight": (kv_heads * head_dim, hidden),
            p + "self_attn.v_proj.weight": (kv_heads * head_dim, hidden),
            p + "self_attn.o_proj.weight": (hidden, heads * head_dim),
            p + "mlp.gate_proj.weight": (mlp, hidden),
            p + "mlp.up_proj.weight": (mlp, hidden),
            p + "mlp.down_proj.weight": (hidden, mlp),
        }
        if model_type == "qwen2":
            shapes |= {p + f"self_attn.{x}_proj.bias": ((heads if x == "q" else kv_heads) * head_dim,) for x in "qkv"}
        if model_type == "qwen3":
            shapes |= {p + "self_attn.q_norm.weight": (head_dim,), p + "self_attn.k_norm.weight": (head_dim,)}
    state = {}
    for name, shape in shapes.items():
        base = 1.0 if name.endswith("norm.weight") else 0.0
        state[name] = (base + scale * rng.standard_normal(shape, dtype=np.float32)).astype(dtype)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = {
        "architectures": [
            {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}[model_type]
        ],
        "model_type": model_type,
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": mlp,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        "tie_word_embeddings": tied,
        "max_position_embeddings": 256,
        "dtype": np.dtype(dtype).name,
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return state

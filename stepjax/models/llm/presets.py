"""Named LLM shapes: tiny test sizes and published sizes (weights are never downloaded; see ``stepjax.interop``)."""

from __future__ import annotations

from typing import Any

from stepjax.models.llm.config import LLMConfig

_LLAMA3_ROPE = {
    "type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}

PRESETS: dict[str, dict[str, Any]] = {
    # Test and demo sizes.
    "tiny": dict(
        vocab_size=256, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=128, max_seq_len=256
    ),
    "tiny_alibi": dict(
        vocab_size=256,
        hidden_size=64,
        num_layers=2,
        num_heads=8,
        num_kv_heads=2,
        mlp_dim=128,
        position="sqrt_alibi",
        max_seq_len=256,
    ),
    "small": dict(
        vocab_size=256, hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2, mlp_dim=384, max_seq_len=512
    ),
    "bench_57m": dict(
        vocab_size=32000,
        hidden_size=512,
        num_layers=8,
        num_heads=8,
        num_kv_heads=2,
        mlp_dim=1536,
        norm_eps=1e-5,
        max_seq_len=2048,
    ),
    # Llama 3.x.
    "llama3_1b": dict(
        vocab_size=128256,
        hidden_size=2048,
        num_layers=16,
        num_heads=32,
        num_kv_heads=8,
        mlp_dim=8192,
        head_dim=64,
        norm_eps=1e-5,
        rope_theta=500_000.0,
        rope_scaling={**_LLAMA3_ROPE, "factor": 32.0},
        tie_embeddings=True,
        max_seq_len=131072,
    ),
    "llama3_8b": dict(
        vocab_size=128256,
        hidden_size=4096,
        num_layers=32,
        num_heads=32,
        num_kv_heads=8,
        mlp_dim=14336,
        norm_eps=1e-5,
        rope_theta=500_000.0,
        rope_scaling=_LLAMA3_ROPE,
        max_seq_len=131072,
    ),
    # Qwen2.5 (qkv bias; small sizes tie embeddings).
    "qwen2p5_0p5b": dict(
        vocab_size=151936,
        hidden_size=896,
        num_layers=24,
        num_heads=14,
        num_kv_heads=2,
        mlp_dim=4864,
        qkv_bias=True,
        tie_embeddings=True,
        rope_theta=1_000_000.0,
        max_seq_len=32768,
    ),
    "qwen2p5_1p5b": dict(
        vocab_size=151936,
        hidden_size=1536,
        num_layers=28,
        num_heads=12,
        num_kv_heads=2,
        mlp_dim=8960,
        qkv_bias=True,
        tie_embeddings=True,
        rope_theta=1_000_000.0,
        max_seq_len=32768,
    ),
    "qwen2p5_7b": dict(
        vocab_size=152064,
        hidden_size=3584,
        num_layers=28,
        num_heads=28,
        num_kv_heads=4,
        mlp_dim=18944,
        qkv_bias=True,
        rope_theta=1_000_000.0,
        max_seq_len=32768,
    ),
    "qwen2p5_32b": dict(
        vocab_size=152064,
        hidden_size=5120,
        num_layers=64,
        num_heads=40,
        num_kv_heads=8,
        mlp_dim=27648,
        qkv_bias=True,
        rope_theta=1_000_000.0,
        max_seq_len=32768,
    ),
    # Qwen3 (qk-norm, no qkv bias).
    "qwen3_0p6b": dict(
        vocab_size=151936,
        hidden_size=1024,
        num_layers=28,
        num_heads=16,
        num_kv_heads=8,
        head_dim=128,
        mlp_dim=3072,
        qk_norm=True,
        tie_embeddings=True,
        rope_theta=1_000_000.0,
        max_seq_len=40960,
    ),
    "qwen3_8b": dict(
        vocab_size=151936,
        hidden_size=4096,
        num_layers=36,
        num_heads=32,
        num_kv_heads=8,
        head_dim=128,
        mlp_dim=12288,
        qk_norm=True,
        rope_theta=1_000_000.0,
        max_seq_len=40960,
    ),
    # Step1 family (sqrt-ALiBi, no RoPE): the 3B member of Step-Audio-EditX / TTS-3B (specs/multimodal.md).
    # The vocab of a real checkpoint must be read from its config; 74,752 is the EditX figure.
    "step1_3b": dict(
        vocab_size=74752,
        hidden_size=3072,
        num_layers=32,
        num_heads=48,
        num_kv_heads=4,
        head_dim=64,
        mlp_dim=8192,
        position="sqrt_alibi",
        norm_eps=1e-5,
        max_seq_len=32768,
    ),
}


def llm_preset(name: str, **overrides: Any) -> LLMConfig:
    """``LLMConfig`` for a named preset, with field overrides (``llm_preset('tiny', num_layers=4)``)."""
    if name not in PRESETS:
        raise KeyError(f"unknown LLM preset {name!r}; known presets: {sorted(PRESETS)}")
    return LLMConfig(**{**PRESETS[name], **overrides})

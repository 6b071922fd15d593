"""Decoder-LM configuration: one dataclass covering Llama-3, Qwen2/2.5/3 and Step1 (ALiBi) shapes."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from stepjax.nn import MLP_KINDS, POSITION_KINDS

REMAT_POLICIES = ("none", "full", "dots", "dots_with_no_batch_dims")
#: ``attention_impl``: "xla" = ``stepjax.nn.attention``'s own path; "reference" / "pallas" = ``stepjax.kernels``'
#: pure-JAX reference / Pallas kernel (interpreted on CPU); "auto" = Pallas on GPU/TPU, "xla" elsewhere.
ATTENTION_IMPLS = ("xla", "reference", "pallas", "auto")
#: ``logprob_impl``: "full" = ``[batch, len, vocab]`` logits then log-softmax; the others run
#: ``stepjax.kernels.fused_logprob`` (that ``impl``) on the final hidden states, never materialising the logits.
LOGPROB_IMPLS = ("full", "chunked", "pallas", "auto")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class LLMConfig:
    """Shape and numerics of a decoder-only LM.

    ``head_dim`` defaults to ``hidden_size // num_heads``; ``num_kv_heads`` < ``num_heads`` gives GQA (1 = MQA).
    ``dtype`` is the compute dtype, ``param_dtype`` the storage dtype (mixed precision = bfloat16 / float32).
    ``attention_impl`` (``ATTENTION_IMPLS``) picks the attention path and ``logprob_impl`` (``LOGPROB_IMPLS``) the
    training loss's vocabulary projection; neither changes the parameters or the maths, only how it is computed.
    """

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    mlp_dim: int
    head_dim: int | None = None
    mlp_kind: str = "swiglu"
    norm: str = "rms"
    norm_eps: float = 1e-6
    position: str = "rope"
    rope_theta: float = 10_000.0
    rope_scaling: Mapping[str, Any] | None = None
    qkv_bias: bool = False
    qk_norm: bool = False
    tie_embeddings: bool = False
    max_seq_len: int = 2048
    initializer_range: float = 0.02
    dtype: str = "float32"
    param_dtype: str = "float32"
    scan_layers: bool = False
    remat: str = "none"
    attention_impl: str = "xla"
    logprob_impl: str = "full"

    def __post_init__(self):
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        if self.rope_scaling is not None:
            object.__setattr__(self, "rope_scaling", tuple(sorted(dict(self.rope_scaling).items())))
        self.validate()

    def validate(self) -> None:
        """Raises ``ValueError`` naming the first inconsistent field."""
        checks = [
            (self.num_heads % self.num_kv_heads == 0, "num_heads must be a multiple of num_kv_heads"),
            (self.head_dim % 2 == 0 or self.position != "rope", "head_dim must be even for rope"),
            (self.mlp_kind in MLP_KINDS, f"mlp_kind must be one of {MLP_KINDS}"),
            (self.position in POSITION_KINDS, f"position must be one of {POSITION_KINDS}"),
            (self.norm in ("rms", "layer"), "norm must be 'rms' or 'layer'"),
            (self.dtype in DTYPES, f"dtype must be one of {sorted(DTYPES)}"),
            (self.param_dtype in DTYPES, f"param_dtype must be one of {sorted(DTYPES)}"),
            (self.remat in REMAT_POLICIES, f"remat must be one of {REMAT_POLICIES}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"LLMConfig: {message} (got {self})")
        for name, choices in (("attention_impl", ATTENTION_IMPLS), ("logprob_impl", LOGPROB_IMPLS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"LLMConfig.{name} must be one of {choices}, got {getattr(self, name)!r}")
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "mlp_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"LLMConfig.{name} must be positive, got {getattr(self, name)}")

    @property
    def compute_dtype(self) -> jnp.dtype:
        return DTYPES[self.dtype]

    @property
    def storage_dtype(self) -> jnp.dtype:
        return DTYPES[self.param_dtype]

    def replace(self, **changes: Any) -> LLMConfig:
        return dataclasses.replace(self, **changes)

    def num_params(self) -> int:
        """Parameter count (embeddings included)."""
        d, h, n, kv, f = self.hidden_size, self.head_dim, self.num_heads, self.num_kv_heads, self.mlp_dim
        attn = d * h * (n + 2 * kv) + n * h * d + (h * (n + 2 * kv) if self.qkv_bias else 0)
        mlp = d * f * (3 if self.mlp_kind.endswith("glu") else 2)
        norm = 2 * d if self.norm == "layer" else d  # LayerNorm has a bias; qk-norms are always RMS
        norms = 2 * norm + (2 * h if self.qk_norm else 0)
        head = 0 if self.tie_embeddings else self.vocab_size * d
        return self.num_layers * (attn + mlp + norms) + self.vocab_size * d + head + norm

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward = 3 x forward): 6 N_matmul + 12 L d_attn T / 2 (causal)."""
        d, h, n, kv, f = self.hidden_size, self.head_dim, self.num_heads, self.num_kv_heads, self.mlp_dim
        per_layer = d * h * (n + 2 * kv) + n * h * d + d * f * (3 if self.mlp_kind.endswith("glu") else 2)
        matmul_params = self.num_layers * per_layer + self.vocab_size * d
        attention = self.num_layers * 2 * 2 * n * h * seq_len / 2  # QK^T and PV, causal half
        return 6.0 * matmul_params + 3.0 * attention

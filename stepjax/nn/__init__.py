"""Layers: named einsums, norms, positions, attention, MLPs, embeddings."""

from stepjax.nn.attention import POSITION_KINDS, Attention, attention_mask, dot_product_attention
from stepjax.nn.embedding import Embed
from stepjax.nn.linear import Einsum, linear, param
from stepjax.nn.mlp import MLP, MLP_KINDS
from stepjax.nn.norms import LayerNorm, RMSNorm, make_norm
from stepjax.nn.positions import (
    alibi_bias,
    alibi_slopes,
    apply_rope,
    register_rope_scaling,
    rope_inv_freq,
)

__all__ = [
    "MLP",
    "MLP_KINDS",
    "POSITION_KINDS",
    "Attention",
    "Einsum",
    "Embed",
    "LayerNorm",
    "RMSNorm",
    "alibi_bias",
    "alibi_slopes",
    "apply_rope",
    "attention_mask",
    "dot_product_attention",
    "linear",
    "make_norm",
    "param",
    "register_rope_scaling",
    "rope_inv_freq",
]

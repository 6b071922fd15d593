"""Feed-forward blocks: gated (SwiGLU / GeGLU) and plain two-layer MLPs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from stepjax.nn.linear import linear
from stepjax.sharding import constrain

ACTIVATIONS = {
    "silu": jax.nn.silu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}
MLP_KINDS = ("swiglu", "geglu", "gelu", "relu")


class MLP(nnx.Module):
    """Feed-forward block.

    ``kind='swiglu'``: ``down(silu(gate(x)) * up(x))``; ``'geglu'`` with gelu; ``'gelu'``/``'relu'``:
    ``down(act(up(x)))``.

    ``x``: ``[..., embed]`` -> ``[..., embed]``; hidden ``[..., mlp]``.
    """

    def __init__(
        self,
        embed_dim: int,
        mlp_dim: int,
        *,
        rngs: nnx.Rngs,
        kind: str = "swiglu",
        use_bias: bool = False,
        kernel_init: nnx.initializers.Initializer = nnx.initializers.normal(0.02),
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
    ):
        if kind not in MLP_KINDS:
            raise ValueError(f"unknown mlp kind {kind!r}; expected one of {MLP_KINDS}")
        self.kind = kind
        common = dict(rngs=rngs, use_bias=use_bias, kernel_init=kernel_init, dtype=dtype, param_dtype=param_dtype)
        self.gate_proj = linear(embed_dim, mlp_dim, ("embed", "mlp"), **common) if kind.endswith("glu") else None
        self.up_proj = linear(embed_dim, mlp_dim, ("embed", "mlp"), **common)
        self.down_proj = linear(mlp_dim, embed_dim, ("mlp", "embed"), **common)

    def __call__(self, x: jax.Array) -> jax.Array:
        act = ACTIVATIONS[{"swiglu": "silu", "geglu": "gelu_tanh"}.get(self.kind, self.kind)]
        up = self.up_proj(x)
        hidden = act(self.gate_proj(x)) * up if self.gate_proj is not None else act(up)
        hidden = constrain(hidden, ("act_batch", "act_len", "act_mlp"))
        return self.down_proj(hidden)

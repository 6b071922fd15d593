"""Token embedding with an optional tied output head."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from stepjax.nn.linear import param


class Embed(nnx.Module):
    """Lookup table ``[vocab, embed]``; ``attend(x)`` gives logits against the same table (tied head)."""

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int,
        *,
        rngs: nnx.Rngs,
        embedding_init: nnx.initializers.Initializer = nnx.initializers.normal(0.02),
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
    ):
        self.dtype = dtype
        self.embedding = param(rngs, embedding_init, (vocab_size, embed_dim), ("vocab", "embed"), param_dtype)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        """``tokens [batch, len]`` int -> ``[batch, len, embed]``."""
        return jnp.take(self.embedding[...], tokens, axis=0).astype(self.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        """``x [..., embed]`` -> logits ``[..., vocab]`` (in ``dtype``)."""
        return jnp.einsum("...d,vd->...v", x.astype(self.dtype), self.embedding[...].astype(self.dtype))

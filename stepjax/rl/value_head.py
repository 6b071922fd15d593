"""Value models for PPO: a decoder trunk plus a bias-free ``Linear(hidden, 1)``.

ORZ's critic is a separate copy of the base LM with a scalar head (``ValueModel``); a shared trunk serves both heads
(``PolicyValueModel``). Values use the shifted ``inputs``/``targets`` layout of the LM loss: the value at position
``i`` is read from the hidden state of ``inputs[i]``, i.e. the token *before* the action ``targets[i]`` — the state
``s_t`` in which that action is taken.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from stepjax.models.llm import DecoderLM
from stepjax.nn.linear import linear


def _value_head(trunk: DecoderLM, rngs: nnx.Rngs, init_scale: float):
    cfg = trunk.cfg
    return linear(
        cfg.hidden_size,
        1,
        ("embed", None),
        rngs=rngs,
        use_bias=False,
        kernel_init=nnx.initializers.normal(init_scale),
        dtype=cfg.compute_dtype,
        param_dtype=cfg.storage_dtype,
    )


class ValueModel(nnx.Module):
    """Separate critic: ``V = head(trunk.hidden_states(...))``. The trunk's LM head is kept but unused.

    Args:
      trunk: a ``DecoderLM`` (e.g. a fresh copy of the policy's base weights, as ORZ initialises its critic).
      rngs: for the head's initialisation.
      init_scale: std of the head's initial weights (small, so initial values are near 0).
    """

    def __init__(self, trunk: DecoderLM, *, rngs: nnx.Rngs, init_scale: float = 1e-3):
        self.trunk = trunk
        self.value_head = _value_head(trunk, rngs, init_scale)

    def __call__(
        self, tokens: jax.Array, positions: jax.Array | None = None, segment_ids: jax.Array | None = None
    ) -> jax.Array:
        """Values ``[batch, len]`` float32 for ``tokens [batch, len]`` (value of the state after reading each token)."""
        hidden = self.trunk.hidden_states(tokens, positions, segment_ids)
        return self.value_head(hidden)[..., 0].astype(jnp.float32)


class PolicyValueModel(nnx.Module):
    """Shared trunk: one forward gives the policy's logits and the values."""

    def __init__(self, lm: DecoderLM, *, rngs: nnx.Rngs, init_scale: float = 1e-3):
        self.lm = lm
        self.value_head = _value_head(lm, rngs, init_scale)

    def __call__(
        self, tokens: jax.Array, positions: jax.Array | None = None, segment_ids: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """``(logits [batch, len, vocab], values [batch, len])``, both float32."""
        hidden = self.lm.hidden_states(tokens, positions, segment_ids)
        return self.lm.logits(hidden), self.value_head(hidden)[..., 0].astype(jnp.float32)

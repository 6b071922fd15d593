"""Process reward model: a ``DecoderLM`` trunk plus a ``Linear(hidden, 1)`` score head (with bias), read at the
separator token after each step; ``σ(logit)`` is the probability that the step is correct (llm-rl.md §5.1).

One forward pass scores every step of a solution (layout in ``stepjax.data.prm_encoding``). The trunk's LM head is
kept but unused, as in ``stepjax.rl.value_head``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from stepjax.data.prm_encoding import encode_prm_example, pack_prm_examples, step_scores_from_row
from stepjax.data.tokenizers import Tokenizer
from stepjax.models.llm import DecoderLM
from stepjax.nn.linear import linear
from stepjax.objectives.prm import prm_loss
from stepjax.objectives.terms import LossTerms


class StepRewardModel(nnx.Module):
    """``logits = head(trunk.hidden_states(tokens))[..., 0]``.

    Args:
      trunk: a ``DecoderLM`` (random, or an SFT'd policy's weights).
      rngs: for the head's initialisation.
      init_scale: std of the head's initial weights (small: initial scores near σ(0) = 0.5).
    """

    def __init__(self, trunk: DecoderLM, *, rngs: nnx.Rngs, init_scale: float = 1e-3):
        cfg = trunk.cfg
        self.trunk = trunk
        self.score_head = linear(
            cfg.hidden_size,
            1,
            ("embed", None),
            rngs=rngs,
            use_bias=True,
            kernel_init=nnx.initializers.normal(init_scale),
            dtype=cfg.compute_dtype,
            param_dtype=cfg.storage_dtype,
        )

    def __call__(
        self, tokens: jax.Array, positions: jax.Array | None = None, segment_ids: jax.Array | None = None
    ) -> jax.Array:
        """Step-score logits ``[batch, len]`` float32 at every position (use those at separator positions)."""
        hidden = self.trunk.hidden_states(tokens, positions, segment_ids)
        return self.score_head(hidden)[..., 0].astype(jnp.float32)


def prm_loss_fn(*, train_on_last_step_only: bool = False, aggregation: str = "token_mean"):
    """``loss_fn(model, batch, rng)`` for ``stepjax.train.make_train_step`` on batches with ``tokens``, ``labels``,
    ``step_mask`` (and optional ``positions``, ``segment_ids``), all ``[batch, len]``."""

    def fn(model: StepRewardModel, batch: Mapping[str, jax.Array], rng: jax.Array) -> LossTerms:
        del rng
        segment_ids = batch.get("segment_ids")
        logits = model(batch["tokens"], batch.get("positions"), segment_ids)
        return prm_loss(
            logits,
            batch["labels"],
            batch["step_mask"],
            train_on_last_step_only=train_on_last_step_only,
            segment_ids=segment_ids,
            aggregation=aggregation,
        )

    return fn


def make_step_scorer(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    extra: nnx.State,
    tokenizer: Tokenizer,
    *,
    separator: str = "\n",
    seq_len: int,
    batch_size: int = 64,
    add_bos: bool = True,
) -> Callable[[Sequence[tuple[str, Sequence[str]]]], list[list[float]]]:
    """``score([(prompt, steps), ...]) -> [[σ(logit) per step], ...]``.

    Solutions are packed into rows of ``seq_len`` tokens (segment ids keep them apart) and scored ``batch_size`` rows
    per jitted forward; a last partial chunk is padded to a power of two rows, so few shapes compile.
    """

    @jax.jit
    def forward(params, extra, tokens, positions, segment_ids):
        return jax.nn.sigmoid(nnx.merge(graphdef, params, extra)(tokens, positions, segment_ids))

    def score(items: Sequence[tuple[str, Sequence[str]]]) -> list[list[float]]:
        if not items:
            return []
        examples = [
            encode_prm_example(p, s, None, tokenizer, separator=separator, seq_len=None, add_bos=add_bos)
            for p, s in items
        ]
        packed, places = pack_prm_examples(examples, seq_len, pad_id=tokenizer.pad_id)
        num_rows = len(packed["tokens"])
        probs = []
        for start in range(0, num_rows, batch_size):
            rows = min(batch_size, num_rows - start)
            padded = min(batch_size, 1 << (rows - 1).bit_length())
            chunk = {}
            for key in ("tokens", "positions", "segment_ids"):
                x = np.zeros((padded, seq_len), np.int32)
                if key == "tokens":
                    x[:] = tokenizer.pad_id
                x[:rows] = packed[key][start : start + rows]
                chunk[key] = jnp.asarray(x)
            out = forward(params, extra, chunk["tokens"], chunk["positions"], chunk["segment_ids"])
            probs.append(np.asarray(out)[:rows])
        probs = np.concatenate(probs)
        return [
            step_scores_from_row(probs[row, begin : begin + n], ex["step_mask"])
            for (row, begin, n), ex in zip(places, examples, strict=True)
        ]

    return score

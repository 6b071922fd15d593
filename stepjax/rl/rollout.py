"""Rollouts for RL on language: prompt batches, sampling, and the training rows built from the samples.

A rollout turns ``B`` prompt records into ``B * n`` completions (``n`` samples per prompt, prompt-major rows, so
GRPO groups are consecutive) and lays each (prompt, completion) pair out as one right-padded row in the LM-loss
layout: ``inputs = tokens[:-1]``, ``targets = tokens[1:]``, ``loss_mask`` on the completion's tokens (a final stop
token included), and the sampler's log-probs of those tokens at the same positions (``old_logprobs``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from stepjax.rl.rewards import ScoredBatch, score_batch
from stepjax.sampling import FINISH_STOP, SamplingConfig, generate


class PromptIterator:
    """Endless batches of prompt records in a seeded order, reshuffled every epoch; resumable.

    ``next(it)`` returns a list of ``batch_size`` records. ``get_state()``/``set_state()`` give the position as a
    JSON dict, so a checkpointed RL run resumes with the same prompts (``stepjax.train.run_training`` stores it).
    """

    def __init__(self, records: Sequence[dict], batch_size: int, *, seed: int, shuffle: bool = True):
        if not records:
            raise ValueError("PromptIterator needs at least one record")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.records, self.batch_size, self.seed, self.shuffle = list(records), batch_size, seed, shuffle
        self.epoch, self.index = 0, 0

    def _order(self, epoch: int) -> np.ndarray:
        n = len(self.records)
        return np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)

    def __iter__(self) -> PromptIterator:
        return self

    def __next__(self) -> list[dict]:
        out = []
        while len(out) < self.batch_size:
            order = self._order(self.epoch)
            take = order[self.index : self.index + self.batch_size - len(out)]
            out.extend(self.records[int(i)] for i in take)
            self.index += len(take)
            if self.index >= len(order):
                self.epoch, self.index = self.epoch + 1, 0
        return out

    def get_state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def set_state(self, state: dict[str, int]) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


def encode_prompts(
    tokenizer: Any, prompts: Sequence[str], width: int, *, add_bos: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded prompt ids ``[batch, width]`` int32 and lengths ``[batch]``, BOS first when the tokenizer has
    one and ``add_bos`` (as ``stepjax.data`` builds training examples); a prompt that does not fit raises
    ``ValueError`` naming it."""
    tokens = np.full((len(prompts), width), tokenizer.pad_id, np.int32)
    lengths = np.zeros(len(prompts), np.int32)
    prefix = [tokenizer.bos_id] if add_bos and tokenizer.bos_id is not None else []
    for i, text in enumerate(prompts):
        ids = prefix + tokenizer.encode(text)
        if not ids or len(ids) > width:
            raise ValueError(f"prompt {i} ({text[:60]!r}...) has {len(ids)} tokens; expected 1..{width} (prompt_width)")
        tokens[i, : len(ids)] = ids
        lengths[i] = len(ids)
    return tokens, lengths


@dataclasses.dataclass
class Rollout:
    """One rollout, on the host. ``rows = batch * num_samples``; ``L = width + max_new_tokens - 1``.

    Attributes:
      batch: the training rows: ``inputs``, ``targets``, ``loss_mask`` (float32), ``positions``, ``old_logprobs``,
        each ``[rows, L]``.
      completions: decoded completion texts; ``finish_reasons``: ``'stop'`` or ``'length'`` per row.
      lengths: generated tokens per row; ``scores``: the summed rewards ``[rows]`` (``scored`` has the details).
    """

    batch: dict[str, np.ndarray]
    completions: list[str]
    finish_reasons: list[str]
    lengths: np.ndarray
    scores: np.ndarray
    scored: ScoredBatch


def training_rows(
    prompt_tokens: np.ndarray,
    prompt_lengths: np.ndarray,
    num_samples: int,
    tokens: np.ndarray,
    lengths: np.ndarray,
    logprobs: np.ndarray,
    pad_id: int,
) -> dict[str, np.ndarray]:
    """Lays (prompt, completion) pairs out as LM-loss rows.

    Args:
      prompt_tokens / prompt_lengths: ``[batch, width]`` right-padded prompts and their lengths.
      num_samples: completions per prompt (rows are prompt-major).
      tokens / lengths / logprobs: the sampler's ``[rows, T]`` completions, their lengths and log-probs.
    Returns:
      ``inputs, targets, positions`` int32 and ``loss_mask, old_logprobs`` float32, each ``[rows, width + T - 1]``;
      the completion of row ``r`` is trained at positions ``prompt_len - 1 .. prompt_len + len - 2``.
    """
    batch, width = prompt_tokens.shape
    rows, new = tokens.shape
    if rows != batch * num_samples:
        raise ValueError(f"{rows} completions for {batch} prompts x {num_samples} samples")
    full = np.full((rows, width + new), pad_id, np.int32)
    mask = np.zeros((rows, width + new - 1), np.float32)
    old = np.zeros((rows, width + new - 1), np.float32)
    for r in range(rows):
        p, n = int(prompt_lengths[r // num_samples]), int(lengths[r])
        full[r, :p] = prompt_tokens[r // num_samples, :p]
        full[r, p : p + n] = tokens[r, :n]
        mask[r, p - 1 : p - 1 + n] = 1.0
        old[r, p - 1 : p - 1 + n] = logprobs[r, :n]
    positions = np.broadcast_to(np.arange(width + new - 1, dtype=np.int32), mask.shape).copy()
    return dict(
        inputs=full[:, :-1].copy(), targets=full[:, 1:].copy(), loss_mask=mask, positions=positions, old_logprobs=old
    )


def collect_rollout(
    graphdef: nnx.GraphDef,
    state: Any,
    records: Sequence[dict],
    tokenizer: Any,
    sampling: SamplingConfig,
    rng: jax.Array,
    *,
    prompt_width: int,
    reward_fns: Sequence[Any],
    reward_weights: Sequence[float] | None = None,
) -> Rollout:
    """Samples ``sampling.num_samples`` completions of every record's ``prompt`` (stopping at the tokenizer's EOS),
    scores them against ``ground_truth`` with ``reward_fns`` (``stepjax.rl.rewards.score_batch``: a failing reward
    scores 0 with a warning) and builds the training rows."""
    n = sampling.num_samples
    prompt_tokens, prompt_lengths = encode_prompts(tokenizer, [r["prompt"] for r in records], prompt_width)
    stop = sampling.stop_tokens or (tokenizer.eos_id,)
    out = generate(graphdef, state, prompt_tokens, prompt_lengths, sampling, rng, stop_tokens=[stop] * len(records))
    tokens, lengths, logprobs, reasons = jax.device_get((out.tokens, out.lengths, out.logprobs, out.finish_reason))
    completions = [tokenizer.decode(tokens[r, : lengths[r]]) for r in range(tokens.shape[0])]
    finish = ["stop" if int(x) == FINISH_STOP else "length" for x in reasons]
    answers = [str(records[r // n].get("ground_truth")) for r in range(tokens.shape[0])]
    ids = [f"{records[r // n].get('question', r // n)}#{r % n}" for r in range(tokens.shape[0])]
    scored = score_batch(
        reward_fns, completions, answers=answers, finish_reasons=finish, weights=reward_weights, sample_ids=ids
    )
    batch = training_rows(prompt_tokens, prompt_lengths, n, tokens, lengths, logprobs, sampling.pad_id)
    return Rollout(batch, completions, finish, np.asarray(lengths), scored.rewards, scored)

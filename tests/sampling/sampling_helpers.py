"""Test helpers: a Markov-chain stand-in model with the sampler's cache interface, and numpy references of the
Hugging Face / Step-Audio logit processors, written independently of ``stepjax.sampling``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from stepjax.models.llm.cache import KVCache


class MarkovLM(nnx.Module):
    """Next-token logits = ``table[last token]``: outputs are hand-computable, so the engine's bookkeeping (stops,
    budgets, bans, callbacks, grouping) is tested apart from transformer numerics."""

    def __init__(self, table: np.ndarray):
        self.table = nnx.Param(jnp.asarray(table, jnp.float32))

    def init_cache(self, batch: int, max_len: int, dtype=None) -> KVCache:
        zeros = jnp.zeros((batch, max_len, 1, 1), jnp.float32)
        return KVCache(k=(zeros,), v=(zeros,), lengths=jnp.zeros((batch,), jnp.int32))

    def prefill(self, tokens, lengths, cache):
        last = jnp.take_along_axis(tokens, (lengths - 1)[:, None], axis=1)[:, 0]
        return self.table[...][last], KVCache(k=cache.k, v=cache.v, lengths=lengths)

    def decode(self, tokens, cache, active=None):
        step = 1 if active is None else active.astype(jnp.int32)
        return self.table[...][tokens], KVCache(k=cache.k, v=cache.v, lengths=cache.lengths + step)


def markov_split(table: np.ndarray):
    return nnx.split(MarkovLM(table))


# ------------------------------------------------------------------------------------ numpy references


def softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    finite = np.isfinite(x)
    z = np.where(finite, x - np.max(np.where(finite, x, -np.inf)), -np.inf)
    e = np.where(finite, np.exp(z), 0.0)
    return e / e.sum()


def reference_distribution(logits: np.ndarray, *, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0) -> np.ndarray:
    """The distribution HF samples from, for one row of logits, by its documented rules (float64)."""
    x = np.asarray(logits, np.float64) / temperature
    keep = np.ones(x.shape, bool)
    if top_k:
        keep &= x >= np.sort(x)[::-1][top_k - 1]
    if top_p < 1.0:
        p = softmax(np.where(keep, x, -np.inf))
        order = np.argsort(-p, kind="stable")
        above = 0.0
        nucleus = np.zeros_like(keep)
        for i in order:
            if above < top_p:
                nucleus[i] = True
            above += p[i]
        keep &= nucleus
    if min_p > 0.0:
        p = softmax(np.where(keep, x, -np.inf))
        keep &= p >= min_p * p.max()
    return softmax(np.where(keep, x, -np.inf))


def step_audio_ban(sequence: list[int], vocab: int, window: int = 10, count: int = 2) -> np.ndarray:
    """Boolean ``[vocab]`` of banned tokens after ``sequence`` (Step-Audio's RepetitionAwareLogitsProcessor with
    ``threshold = (count - 1) / window``)."""
    banned = np.zeros(vocab, bool)
    if len(sequence) < window:
        return banned
    recent = sequence[-window:]
    if recent.count(recent[-1]) >= count:
        banned[recent[-1]] = True
    return banned


def full_log_softmax(graphdef, state, tokens: np.ndarray) -> np.ndarray:
    """``log_softmax`` of a plain training forward pass over ``tokens [batch, len]`` (causal, so right padding
    changes nothing before it): ``[batch, len, vocab]`` float64."""
    logits = jax.jit(lambda s, t: nnx.merge(graphdef, s)(t))(state, jnp.asarray(tokens, jnp.int32))
    x = np.asarray(logits, np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))

"""Logit processors and the token draw: pure functions of ``[rows, vocab]`` float32 logits.

Each mirrors the Hugging Face processor of the same name (``TemperatureLogitsWarper``, ``TopKLogitsWarper``,
``TopPLogitsWarper``, ``MinPLogitsWarper``) and Step-Audio's ``RepetitionAwareLogitsProcessor``; removed tokens get
``-inf``, so a categorical draw never picks them and ``softmax`` renormalises over the kept ones.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from stepjax.sampling.config import SamplingConfig

NEG_INF = -jnp.inf


def temperature(logits: jax.Array, value: float) -> jax.Array:
    return logits if value == 1.0 else logits / value


def top_k(logits: jax.Array, k: int) -> jax.Array:
    """Keeps logits >= the k-th largest of their row (ties at the threshold kept, like HF)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits < kth, NEG_INF, logits)


def top_p(logits: jax.Array, p: float) -> jax.Array:
    """Nucleus filter: keeps a token iff the probability mass of the tokens ranked above it is < ``p``.

    HF's form (remove where the ascending cumulative mass is <= 1 - p) is the same set; the top token always stays.
    """
    if p >= 1.0:
        return logits
    order = jnp.argsort(-logits, axis=-1, stable=True)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_above = jnp.cumsum(probs, axis=-1) - probs
    keep_sorted = mass_above < p
    keep_sorted = keep_sorted.at[..., 0].set(True)
    keep = jnp.zeros_like(keep_sorted)
    keep = jnp.put_along_axis(keep, order, keep_sorted, axis=-1, inplace=False)
    return jnp.where(keep, logits, NEG_INF)


def min_p(logits: jax.Array, p: float) -> jax.Array:
    """Keeps tokens whose probability is >= ``p`` x the row's largest probability (compared as probabilities, like
    HF, so the same tokens survive)."""
    if p <= 0.0:
        return logits
    probs = jax.nn.softmax(logits, axis=-1)
    keep = probs >= p * jnp.max(probs, axis=-1, keepdims=True)
    return jnp.where(keep, logits, NEG_INF)


def ban_repetition(logits: jax.Array, recent: jax.Array, seq_len: jax.Array, *, window: int, count: int) -> jax.Array:
    """Step-Audio's repetition rule: if a row's last token occurs >= ``count`` times among its last ``window``
    tokens (itself included), and the row holds at least ``window`` tokens, that token's logit becomes -inf.

    Args:
      logits: ``[rows, vocab]``.
      recent: ``[rows, window]`` the row's last ``window`` tokens, most recent last (-1 where the row is shorter).
      seq_len: ``[rows]`` tokens in the row so far (prompt + generated).
    """
    if window <= 0:
        return logits
    last = recent[:, -1]
    occurrences = jnp.sum(recent == last[:, None], axis=-1)
    ban = (seq_len >= window) & (occurrences >= count) & (last >= 0)
    banned = (jnp.arange(logits.shape[-1])[None, :] == last[:, None]) & ban[:, None]
    return jnp.where(banned, NEG_INF, logits)


def warp(logits: jax.Array, config: SamplingConfig) -> jax.Array:
    """Temperature, top-k, top-p, min-p in Hugging Face's order (the sampling warpers; unused when greedy)."""
    logits = temperature(logits, config.temperature)
    logits = top_k(logits, config.top_k)
    logits = top_p(logits, config.top_p)
    return min_p(logits, config.min_p)


def choose(key: jax.Array, processed: jax.Array, config: SamplingConfig) -> tuple[jax.Array, jax.Array]:
    """``(tokens [rows] int32, distribution [rows, vocab])`` drawn from already-banned logits.

    Greedy: argmax (first index on ties, like torch), and the distribution is the banned logits themselves.
    Otherwise: the warped logits and a categorical draw from them (one independent draw per row).
    """
    if config.is_greedy:
        return first_argmax(processed), processed
    warped = warp(processed, config)
    return gumbel_categorical(key, warped), warped


def first_argmax(x: jax.Array) -> jax.Array:
    """``jnp.argmax(x, axis=-1)`` as int32 ``[rows]`` (first index on ties; the first NaN wins, as ``argmax``).

    Written as a max, then the smallest index holding it: two plain reductions. XLA CPU fuses whatever produces
    ``x`` into ``argmax``'s (value, index) reduction and runs it slowly: in the tiny GRPO benchmark's decode loop
    (256 x 259 logits plus Gumbel noise per step) that fusion took ~85 of the sampler's ~340 ms; this form ~10.
    """
    top = jnp.max(x, axis=-1, keepdims=True)
    hit = (x == top) | jnp.isnan(x)
    index = jnp.arange(x.shape[-1], dtype=jnp.int32)
    return jnp.min(jnp.where(hit, index, x.shape[-1]), axis=-1)


def gumbel_categorical(key: jax.Array, logits: jax.Array) -> jax.Array:
    """One draw per row from ``softmax(logits)``: the same tokens as ``jax.random.categorical(key, logits, -1)``
    (its Gumbel-max draw with the same noise), via ``first_argmax``. The noisy logits are materialised (a barrier)
    so that the noise's two logs per entry run once, vectorised, rather than inside both reductions."""
    noisy = jax.random.gumbel(key, logits.shape, logits.dtype) + logits
    return first_argmax(jax.lax.optimization_barrier(noisy))


def token_logprobs(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """``log_softmax(logits)[row, tokens[row]]`` -> ``[rows]`` float32 (as ``logit - logsumexp``: no
    ``[rows, vocab]`` log-softmax is materialised)."""
    logits = logits.astype(jnp.float32)
    picked = jnp.take_along_axis(logits, tokens[:, None], axis=-1)[:, 0]
    return picked - jax.nn.logsumexp(logits, axis=-1)

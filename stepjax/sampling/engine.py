"""The KV-cache sampler: batched prefill, then a decode loop wholly inside ``jax.jit``.

``generate`` is a pure function of ``(graphdef, state, prompts, prompt_lengths, config, rng)``: the model is split
once (``nnx.split``) and merged inside the jitted function, so a call costs one dispatch (no ``nnx.jit`` overhead).

* Prompts are **right-padded** ``[batch, width]`` with per-row ``prompt_lengths``: token ``i`` of every row sits at
  position ``i`` and cache slot ``i``, so nothing is shifted and positions need no per-row offsets.
* The cache holds ``width + config.max_new_tokens`` slots. Prefill runs the ``batch`` prompts once; with
  ``num_samples = n`` the cache and the last-token logits are then repeated ``n`` times (prompt-major rows).
* The loop is a ``lax.while_loop`` that exits when every row is done (or after ``max_new_tokens`` steps).
  A row is done when it samples one of its stop tokens (kept) or reaches its own budget; finished rows keep riding
  along (static shapes) without advancing their cache length, and their output is padded with ``pad_id``.
* Log-probs: ``logprobs`` are ``log_softmax`` of the **raw** model logits (before the repetition ban, temperature
  or truncation) at the sampled token -- what a training forward pass on the same tokens gives, so they serve as
  the behaviour policy's log-probs. ``processed_logprobs`` (optional) are under the distribution actually sampled
  from (after ban, temperature, top-k/top-p/min-p; for greedy, after the ban only).
* Callback: ``callback(FinishedRow)`` runs on the host from inside the loop (``io_callback``) at the step in which
  the row finishes, before the next decode step starts; the device waits for it, so it should only copy the row
  and hand it on (e.g. to a queue). Latency from a row's last token to its callback is therefore one step, not the
  whole batch. Rows finishing in the same step arrive in row order.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import io_callback

from stepjax.sampling import callbacks as _callbacks
from stepjax.sampling.callbacks import RowCallback
from stepjax.sampling.config import FINISH_LENGTH, FINISH_STOP, SamplingConfig
from stepjax.sampling.processors import ban_repetition, choose, token_logprobs

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class SampleOutput(NamedTuple):
    """What ``generate`` returns; ``rows = batch * num_samples`` (prompt-major), ``T = config.max_new_tokens``.

    Attributes:
      tokens: ``[rows, T]`` int32 generated ids (prompt excluded), ``pad_id`` after each row's end.
      lengths: ``[rows]`` int32 number of generated tokens (a final stop token included).
      logprobs: ``[rows, T]`` float32 raw-model log-probs of ``tokens`` (0 after the end).
      finish_reason: ``[rows]`` int32, ``FINISH_STOP`` or ``FINISH_LENGTH``.
      processed_logprobs: ``[rows, T]`` under the processed distribution, or None unless requested.
    """

    tokens: jax.Array
    lengths: jax.Array
    logprobs: jax.Array
    finish_reason: jax.Array
    processed_logprobs: jax.Array | None = None


def generate(
    graphdef: nnx.GraphDef,
    state: nnx.State | tuple[nnx.State, ...],
    prompts: jax.Array | np.ndarray,
    prompt_lengths: jax.Array | np.ndarray,
    config: SamplingConfig,
    rng: jax.Array | None,
    *,
    max_new_tokens: Sequence[int] | np.ndarray | None = None,
    stop_tokens: Sequence[Sequence[int]] | np.ndarray | None = None,
    callback: RowCallback | None = None,
) -> SampleOutput:
    """Samples continuations of right-padded ``prompts [batch, width]`` (``prompt_lengths [batch]``, each >= 1).

    Args:
      graphdef, state: ``nnx.split(model)`` of a model with ``init_cache``/``prefill``/``decode`` (``DecoderLM``);
        ``state`` may be a tuple of states (e.g. ``(params, rest)``), merged in order.
      config: static settings (``SamplingConfig``).
      rng: a PRNG key (``jax.random.key``); may be None for greedy decoding.
      max_new_tokens: per-row budgets, ``[batch]`` (per prompt) or ``[batch * num_samples]``, each in
        ``[1, config.max_new_tokens]``; default ``config.max_new_tokens``.
      stop_tokens: per-row stop sets, one sequence of ids per prompt or per row (may be empty), or an int array
        padded with -1; default ``config.stop_tokens`` for every row.
      callback: called once per row, on the host, as soon as the row finishes (see the module docstring).
    Returns:
      ``SampleOutput`` (device arrays).
    """
    prompts = np.asarray(prompts)
    lengths = np.asarray(prompt_lengths)
    if prompts.ndim != 2 or not np.issubdtype(prompts.dtype, np.integer):
        raise ValueError(f"prompts must be an int array [batch, width], got {prompts.dtype} {prompts.shape}")
    batch, width = prompts.shape
    if lengths.shape != (batch,) or lengths.min() < 1 or lengths.max() > width:
        raise ValueError(f"prompt_lengths must be [batch={batch}] ints in [1, {width}], got {lengths.tolist()}")
    rows = batch * config.num_samples
    budgets = _per_row(max_new_tokens, config.max_new_tokens, batch, config.num_samples, "max_new_tokens")
    if budgets.min() < 1 or budgets.max() > config.max_new_tokens:
        raise ValueError(
            f"max_new_tokens must be in [1, config.max_new_tokens={config.max_new_tokens}], got {budgets.tolist()}"
        )
    stops = _stop_array(stop_tokens, config.stop_tokens, batch, config.num_samples)
    if rng is None:
        if not config.is_greedy:
            raise ValueError("rng is None but the config samples (greedy=False, temperature > 0): pass a PRNG key")
        rng = jax.random.key(0)
    key = 0 if callback is None else _callbacks.register(callback, config.num_samples)
    try:
        out = _generate_jit(
            graphdef,
            config,
            callback is not None,
            state,
            jnp.asarray(prompts, jnp.int32),
            jnp.asarray(lengths, jnp.int32),
            jnp.asarray(budgets, jnp.int32),
            jnp.asarray(stops, jnp.int32),
            rng,
            jnp.asarray(key, jnp.int32),
        )
        if callback is not None:
            jax.block_until_ready(out)  # every callback has run before the registration goes
    finally:
        if callback is not None:
            _callbacks.unregister(key)
    assert out.tokens.shape[0] == rows
    return out


def pad_prompts(
    prompts: Sequence[Sequence[int]], *, pad_id: int = 0, multiple_of: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Lists of ids -> right-padded ``([batch, width] int32, lengths [batch])``; ``width`` is rounded up to a
    multiple of ``multiple_of`` (bucketing: fewer distinct shapes, fewer compilations)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("prompts must be a non-empty list of non-empty token lists")
    width = max(len(p) for p in prompts)
    width = -(-width // multiple_of) * multiple_of
    out = np.full((len(prompts), width), pad_id, np.int32)
    for i, p in enumerate(prompts):
        out[i, : len(p)] = p
    return out, np.array([len(p) for p in prompts], np.int32)


def generate_from_model(
    model: nnx.Module, prompts: Sequence[Sequence[int]], config: SamplingConfig, rng: jax.Array, **kwargs
) -> list[list[int]]:
    """Convenience for notebooks: ``generate`` on an unsplit model and lists of ids; returns lists of generated ids
    (prompt-major, ``num_samples`` per prompt). Hot loops should split once and call ``generate``."""
    graphdef, state = nnx.split(model)
    tokens, lengths = pad_prompts(prompts, pad_id=config.pad_id, multiple_of=16)
    out = generate(graphdef, state, tokens, lengths, config, rng, **kwargs)
    toks, lens = np.asarray(out.tokens), np.asarray(out.lengths)
    return [toks[r, : lens[r]].tolist() for r in range(toks.shape[0])]


def _per_row(values, default: int, batch: int, n: int, name: str) -> np.ndarray:
    if values is None:
        return np.full((batch * n,), default, np.int32)
    values = np.asarray(values, np.int32)
    if values.shape == (batch * n,):
        return values
    if values.shape == (batch,):
        return np.repeat(values, n)
    raise ValueError(f"{name} must have shape [batch={batch}] or [batch * num_samples={batch * n}], got {values.shape}")


def _stop_array(stop_tokens, default: tuple[int, ...], batch: int, n: int) -> np.ndarray:
    if stop_tokens is None:
        row = np.array(default or (-1,), np.int32)
        return np.broadcast_to(row, (batch * n, row.shape[0])).copy()
    if isinstance(stop_tokens, np.ndarray) and stop_tokens.ndim == 2:
        arr = stop_tokens.astype(np.int32)
    else:
        sets = [list(s) for s in stop_tokens]
        width = max([len(s) for s in sets] + [1])
        arr = np.full((len(sets), width), -1, np.int32)
        for i, s in enumerate(sets):
            arr[i, : len(s)] = s
    if arr.shape[0] == batch and batch * n != batch:
        arr = np.repeat(arr, n, axis=0)
    if arr.shape[0] != batch * n:
        raise ValueError(f"stop_tokens must give one set per prompt ({batch}) or per row ({batch * n}), got {len(arr)}")
    return arr


class _Carry(NamedTuple):
    step: jax.Array
    logits: jax.Array  # [rows, vocab] raw logits for the next token
    cache: object
    done: jax.Array
    num_generated: jax.Array
    tokens: jax.Array
    logprobs: jax.Array
    processed: jax.Array | None
    reason: jax.Array
    recent: jax.Array | None  # [rows, window] for the repetition ban
    rng: jax.Array
    states: tuple  # the model state, unchanged: carried (not closed over) so that NNX transforms inside the model
    # (nnx.scan over layers) see variables of the loop body's own trace level


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _generate_jit(
    graphdef, config: SamplingConfig, has_callback: bool, state, prompts, lengths, budgets, stops, rng, key
):
    states = state if isinstance(state, tuple) else (state,)
    n, steps = config.num_samples, config.max_new_tokens
    batch, width = prompts.shape
    rows = batch * n
    model = nnx.merge(graphdef, *states)
    dtype = None if config.cache_dtype is None else _DTYPES[config.cache_dtype]
    cache = model.init_cache(batch, width + steps, dtype)
    logits, cache = model.prefill(prompts, lengths, cache)
    if n > 1:
        cache, logits = cache.repeat(n), jnp.repeat(logits, n, axis=0)
        prompts, lengths = jnp.repeat(prompts, n, axis=0), jnp.repeat(lengths, n)

    recent = None
    window = config.repetition_window
    if window > 0:
        idx = lengths[:, None] - window + jnp.arange(window)[None, :]
        recent = jnp.where(idx >= 0, jnp.take_along_axis(prompts, jnp.maximum(idx, 0), axis=1), -1)

    def body(c: _Carry) -> _Carry:
        rng, sub = jax.random.split(c.rng)
        banned = c.logits
        if window > 0:
            seq_len = lengths + c.num_generated
            banned = ban_repetition(banned, c.recent, seq_len, window=window, count=config.repetition_count)
        token, dist = choose(sub, banned, config)
        active = ~c.done
        slot = (jnp.arange(steps)[None, :] == c.num_generated[:, None]) & active[:, None]
        tokens = jnp.where(slot, token[:, None], c.tokens)
        logprobs = jnp.where(slot, token_logprobs(c.logits, token)[:, None], c.logprobs)
        processed = c.processed
        if processed is not None:
            processed = jnp.where(slot, token_logprobs(dist, token)[:, None], processed)
        num_generated = c.num_generated + active.astype(jnp.int32)
        hit_stop = active & jnp.any(token[:, None] == stops, axis=-1)
        hit_budget = active & ~hit_stop & (num_generated >= budgets)
        reason = jnp.where(hit_stop, FINISH_STOP, jnp.where(hit_budget, FINISH_LENGTH, c.reason))
        done = c.done | hit_stop | hit_budget
        if has_callback:
            newly = done & active
            jax.lax.cond(
                jnp.any(newly),
                lambda: io_callback(_callbacks.dispatch, None, key, newly, tokens, num_generated, logprobs, reason),
                lambda: None,
            )
        recent = c.recent
        if recent is not None:
            shifted = jnp.concatenate([recent[:, 1:], token[:, None]], axis=1)
            recent = jnp.where(active[:, None], shifted, recent)
        step_model = nnx.merge(graphdef, *c.states)
        logits, cache = step_model.decode(token, c.cache, active & ~done)
        return _Carry(
            c.step + 1, logits, cache, done, num_generated, tokens, logprobs, processed, reason, recent, rng, c.states
        )

    def cond(c: _Carry) -> jax.Array:
        return (c.step < steps) & ~jnp.all(c.done)

    init = _Carry(
        step=jnp.zeros((), jnp.int32),
        logits=logits,
        cache=cache,
        done=jnp.zeros((rows,), bool),
        num_generated=jnp.zeros((rows,), jnp.int32),
        tokens=jnp.full((rows, steps), config.pad_id, jnp.int32),
        logprobs=jnp.zeros((rows, steps), jnp.float32),
        processed=jnp.zeros((rows, steps), jnp.float32) if config.processed_logprobs else None,
        reason=jnp.zeros((rows,), jnp.int32),
        recent=recent,
        rng=rng,
        states=states,
    )
    final = jax.lax.while_loop(cond, body, init)
    return SampleOutput(final.tokens, final.num_generated, final.logprobs, final.reason, final.processed)

"""KV-cache path of ``DecoderLM``: prefill + step-by-step decode give the full forward pass's logits (float32)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from stepjax.models.llm import DecoderLM, llm_preset
from stepjax.models.llm.cache import CACHE_AXES, KVCache, cache_shardings
from stepjax.sharding import DEFAULT_RULES, make_mesh

VOCAB = 64
ATOL = 1e-5


def _cfg(**overrides):
    # initializer_range 0.1 so logits are O(1) and 1e-5 is a meaningful tolerance.
    base = dict(
        vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=64, initializer_range=0.1
    )
    return llm_preset("tiny", **{**base, **overrides})


@functools.partial(jax.jit, static_argnums=0)
def _full(graphdef, state, tokens):
    return nnx.merge(graphdef, state)(tokens)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _prefill_all(graphdef, state, tokens, lengths, max_len):
    model = nnx.merge(graphdef, state)
    hidden, cache = model.extend(tokens, model.init_cache(tokens.shape[0], max_len), lengths)
    return model.logits(hidden), cache


@functools.partial(jax.jit, static_argnums=0)
def _decode(graphdef, state, tokens, cache, active):
    return nnx.merge(graphdef, state).decode(tokens, cache, active)


def _check_cache_matches_full(cfg, seed=0):
    model = DecoderLM(cfg, rngs=nnx.Rngs(seed))
    graphdef, state = nnx.split(model)
    total, width = 11, 6  # full length of every row; prompt block width
    prompt_lengths = np.array([6, 2, 4], np.int32)
    seqs = np.random.default_rng(seed).integers(0, VOCAB, (3, total)).astype(np.int32)
    full = np.asarray(_full(graphdef, state, jnp.asarray(seqs)))

    block = seqs[:, :width].copy()
    for b, n in enumerate(prompt_lengths):
        block[b, n:] = 0  # right padding: must not influence anything
    logits, cache = _prefill_all(graphdef, state, jnp.asarray(block), jnp.asarray(prompt_lengths), total + 1)
    logits = np.asarray(logits)
    for b, n in enumerate(prompt_lengths):
        np.testing.assert_allclose(logits[b, :n], full[b, :n], atol=ATOL, rtol=0)
    np.testing.assert_array_equal(np.asarray(cache.lengths), prompt_lengths)

    pos = prompt_lengths.copy()
    while (pos < total).any():
        active = pos < total
        nxt = np.where(active, seqs[np.arange(3), np.minimum(pos, total - 1)], 0).astype(np.int32)
        step, cache = _decode(graphdef, state, jnp.asarray(nxt), cache, jnp.asarray(active))
        step = np.asarray(step)
        for b in np.flatnonzero(active):
            np.testing.assert_allclose(step[b], full[b, pos[b]], atol=ATOL, rtol=0, err_msg=f"row {b} pos {pos[b]}")
        pos = pos + active
        # Finished rows do not advance.
        np.testing.assert_array_equal(np.asarray(cache.lengths), pos)
    return cache


@pytest.mark.parametrize("scan", [False, True], ids=["unrolled", "scan"])
@pytest.mark.parametrize("position", ["rope", "alibi", "sqrt_alibi"])
def test_prefill_and_decode_match_full_forward(position, scan):
    cfg = _cfg(position=position, scan_layers=scan)
    cache = _check_cache_matches_full(cfg)
    if scan:
        assert cache.stacked and cache.k.shape == (cfg.num_layers, 3, 12, cfg.num_kv_heads, cfg.head_dim)
    else:
        assert not cache.stacked and len(cache.k) == cfg.num_layers
        assert cache.k[0].shape == (3, 12, cfg.num_kv_heads, cfg.head_dim)


def test_cache_path_with_qk_norm_bias_mqa_and_llama3_rope():
    cfg = _cfg(
        num_heads=4,
        num_kv_heads=1,
        qk_norm=True,
        qkv_bias=True,
        rope_theta=5e5,
        rope_scaling={"type": "llama3", "factor": 8.0, "original_max_position_embeddings": 8},
        head_dim=16,
    )
    model = DecoderLM(cfg, rngs=nnx.Rngs(0))
    # qkv biases init to zero: randomise them so the test would see a missing bias.
    _, state = nnx.split(model)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(5), len(leaves))
    leaves = [x + 0.1 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys, strict=True)]
    nnx.update(model, jax.tree.unflatten(treedef, leaves))
    _check_cache_matches_full_model(model)


def _check_cache_matches_full_model(model):
    graphdef, state = nnx.split(model)
    seqs = np.random.default_rng(1).integers(0, VOCAB, (2, 9)).astype(np.int32)
    full = np.asarray(_full(graphdef, state, jnp.asarray(seqs)))
    lengths = np.array([3, 5], np.int32)
    block = seqs[:, :5].copy()
    block[0, 3:] = 7
    logits, cache = _prefill_all(graphdef, state, jnp.asarray(block), jnp.asarray(lengths), 9)
    for b, n in enumerate(lengths):
        np.testing.assert_allclose(np.asarray(logits)[b, :n], full[b, :n], atol=ATOL, rtol=0)
    pos = lengths.copy()
    for _ in range(4):
        step, cache = _decode(graphdef, state, jnp.asarray(seqs[[0, 1], pos]), cache, jnp.ones(2, bool))
        for b in range(2):
            np.testing.assert_allclose(np.asarray(step)[b], full[b, pos[b]], atol=ATOL, rtol=0)
        pos = pos + 1


def test_repeat_orders_rows_prompt_major():
    k = jnp.arange(2 * 3 * 1 * 1 * 1, dtype=jnp.float32).reshape(2, 3, 1, 1, 1)  # stacked: [layers, batch, ...]
    cache = KVCache(k=k, v=k, lengths=jnp.array([4, 5, 6]))
    rep = cache.repeat(2)
    np.testing.assert_array_equal(np.asarray(rep.lengths), [4, 4, 5, 5, 6, 6])
    np.testing.assert_array_equal(np.asarray(rep.k)[1, :, 0, 0, 0], [3, 3, 4, 4, 5, 5])
    flat = KVCache(k=(k[0],), v=(k[0],), lengths=jnp.array([4, 5, 6])).repeat(3)
    np.testing.assert_array_equal(np.asarray(flat.k[0])[:, 0, 0, 0], [0, 0, 0, 1, 1, 1, 2, 2, 2])


def test_cache_sharding_follows_logical_rules(devices):
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    model = nnx.eval_shape(lambda: DecoderLM(_cfg(scan_layers=True), rngs=nnx.Rngs(0)))
    cache = jax.eval_shape(lambda: model.init_cache(8, 16))
    shardings = cache_shardings(cache, mesh, DEFAULT_RULES)
    assert CACHE_AXES == ("act_batch", "cache_len", "act_kv_heads", "head_dim")
    assert tuple(shardings.k.spec) == (None, ("data", "fsdp"), None, "tensor", None)
    assert tuple(shardings.lengths.spec) == (("data", "fsdp"),)

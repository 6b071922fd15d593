"""DecoderLM invariants: packing, causality, scanned == unrolled layers, remat, bf16, and learning one batch."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from stepjax.models.llm import DecoderLM, LLMConfig, llm_preset
from stepjax.train.optimizer import make_optimizer
from stepjax.train.state import create_train_state
from stepjax.train.step import lm_loss_fn, make_train_step

VOCAB = 64


def _cfg(**overrides) -> LLMConfig:
    # initializer_range 0.1 (not 0.02) so logits are O(1) and tolerances below are meaningful.
    base = dict(
        vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=64, initializer_range=0.1
    )
    return llm_preset("tiny", **{**base, **overrides})


@functools.partial(jax.jit, static_argnums=0)
def _apply(graphdef, state, tokens, positions, segment_ids):
    return nnx.merge(graphdef, state)(tokens, positions, segment_ids)


def _logits(model: DecoderLM, tokens, positions=None, segment_ids=None) -> np.ndarray:
    """Jitted forward; compiled once per model structure and input shapes."""
    graphdef, state = nnx.split(model)
    args = [None if a is None else jnp.asarray(a, jnp.int32) for a in (tokens, positions, segment_ids)]
    return np.asarray(_apply(graphdef, state, *args))


def _tokens(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, size=shape).astype(np.int32)


@pytest.mark.parametrize("position", ["rope", "alibi", "sqrt_alibi"])
def test_packed_equals_unpacked(position):
    model = DecoderLM(_cfg(position=position, qk_norm=True, qkv_bias=True), rngs=nnx.Rngs(0))
    lengths, row_len = (6, 3, 5), 16
    seqs = [_tokens(n, seed=i) for i, n in enumerate(lengths)]
    # Row 0 packs the three sequences (then 2 padding slots); row 1 + k holds sequence k alone, then padding.
    tokens = np.zeros((1 + len(seqs), row_len), np.int32)
    positions = np.zeros_like(tokens)
    segments = np.zeros_like(tokens)
    start = 0
    for k, seq in enumerate(seqs):
        n = len(seq)
        packed = slice(start, start + n)
        tokens[0, packed], positions[0, packed], segments[0, packed] = seq, range(n), k + 1
        tokens[k + 1, :n], positions[k + 1, :n], segments[k + 1, :n] = seq, range(n), 1
        start += n
    logits = _logits(model, tokens, positions, segments)
    start = 0
    for k, seq in enumerate(seqs):
        n = len(seq)
        np.testing.assert_allclose(logits[0, start : start + n], logits[k + 1, :n], atol=1e-5)
        start += n
    # The reference rows are not themselves a packing artefact: a sequence alone at its own length agrees.
    np.testing.assert_allclose(logits[1, : lengths[0]], _logits(model, seqs[0][None])[0], atol=1e-5)


@pytest.mark.parametrize("position", ["rope", "sqrt_alibi"])
def test_future_tokens_do_not_change_earlier_logits(position):
    model = DecoderLM(_cfg(position=position), rngs=nnx.Rngs(1))
    tokens = _tokens((2, 10))
    changed = tokens.copy()
    changed[:, 6:] = (changed[:, 6:] + 1) % VOCAB
    a, b = _logits(model, tokens), _logits(model, changed)
    np.testing.assert_allclose(a[:, :6], b[:, :6], atol=1e-6)
    assert np.abs(a[:, 6:] - b[:, 6:]).max() > 1e-3


def test_default_positions_and_segments():
    model = DecoderLM(_cfg(), rngs=nnx.Rngs(2))
    tokens = _tokens((2, 7))
    explicit = _logits(model, tokens, jnp.broadcast_to(jnp.arange(7), (2, 7)), jnp.ones((2, 7), jnp.int32))
    np.testing.assert_allclose(_logits(model, tokens), explicit, atol=1e-6)
    assert explicit.shape == (2, 7, VOCAB) and explicit.dtype == np.float32


@pytest.mark.parametrize("extra", [{}, {"qk_norm": True, "qkv_bias": True, "tie_embeddings": True}])
def test_scan_layers_matches_unrolled(extra):
    unrolled = DecoderLM(_cfg(**extra), rngs=nnx.Rngs(3))
    scanned = DecoderLM(_cfg(scan_layers=True, **extra), rngs=nnx.Rngs(4))
    params = nnx.to_pure_dict(nnx.state(unrolled, nnx.Param))
    layers = [params["layers"][i] for i in range(2)]
    params["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
    state = nnx.state(scanned, nnx.Param)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(scanned, state)
    tokens = _tokens((2, 9))
    np.testing.assert_allclose(_logits(scanned, tokens), _logits(unrolled, tokens), atol=1e-5)


def _grads(cfg: LLMConfig, params: nnx.State, tokens: np.ndarray):
    """Gradient of the next-token loss w.r.t. ``params`` for a model built from ``cfg`` (only its structure is used)."""
    graphdef, _, rest = nnx.split(nnx.eval_shape(lambda: DecoderLM(cfg, rngs=nnx.Rngs(0))), nnx.Param, ...)

    def loss(p):
        logits = nnx.merge(graphdef, p, rest)(jnp.asarray(tokens[:, :-1]))
        logp = jax.nn.log_softmax(logits)
        return -jnp.take_along_axis(logp, jnp.asarray(tokens[:, 1:, None]), axis=-1).mean()

    # The policy must really reach the traced program (equal gradients alone would not show that).
    assert ("remat" in str(jax.make_jaxpr(jax.grad(loss))(params))) == (cfg.remat != "none")
    return jax.jit(jax.grad(loss))(params)


@pytest.mark.parametrize("scan", [False, True])
def test_remat_gives_same_gradients(scan):
    tokens = _tokens((2, 9))
    params = nnx.state(DecoderLM(_cfg(scan_layers=scan), rngs=nnx.Rngs(5)), nnx.Param)
    ref = _grads(_cfg(scan_layers=scan), params, tokens)
    for policy in ("full",) if scan else ("full", "dots"):
        got = _grads(_cfg(scan_layers=scan, remat=policy), params, tokens)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6), got, ref)
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(ref)) > 1e-3


def test_bf16_compute_close_to_f32():
    tokens = _tokens((2, 12))
    f32 = _logits(DecoderLM(_cfg(), rngs=nnx.Rngs(6)), tokens)
    model16 = DecoderLM(_cfg(dtype="bfloat16"), rngs=nnx.Rngs(6))  # same seed: same (float32-stored) params
    assert model16.embed.embedding[...].dtype == jnp.float32
    bf16 = _logits(model16, tokens)
    assert bf16.dtype == np.float32 and np.isfinite(bf16).all()
    err = np.abs(bf16 - f32).max()
    assert np.abs(f32).max() > 1.0  # logits of order one, so the bound below is not trivially met
    assert err < 2e-2 * np.abs(f32).max()
    assert err > 1e-4  # it really computed in bf16


def test_tied_embeddings_reuse_the_table():
    model = DecoderLM(_cfg(tie_embeddings=True), rngs=nnx.Rngs(7))
    assert model.lm_head is None
    tokens = _tokens((1, 5))
    hidden = model.hidden_states(jnp.asarray(tokens))
    want = np.asarray(hidden) @ np.asarray(model.embed.embedding[...]).T
    np.testing.assert_allclose(_logits(model, tokens), want, atol=1e-5)


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"qkv_bias": True, "tie_embeddings": True},
        {"qk_norm": True, "head_dim": 16},
        {"mlp_kind": "gelu", "norm": "layer"},
    ],
)
def test_num_params_counts_the_model(extra):
    cfg = _cfg(**extra)
    model = nnx.eval_shape(lambda: DecoderLM(cfg, rngs=nnx.Rngs(0)))
    actual = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert cfg.num_params() == actual


def test_tiny_lm_overfits_one_batch():
    cfg = _cfg()
    tx, schedule = make_optimizer({"name": "adam", "learning_rate": 1e-2}, total_steps=300)
    graphdef, state = create_train_state(lambda rngs: DecoderLM(cfg, rngs=rngs), tx, seed=0)
    step = jax.jit(make_train_step(graphdef, lm_loss_fn(), tx, loss_weights={"lm": 1.0}, schedule=schedule))
    seq = _tokens((4, 17), seed=11)
    batch = {
        "inputs": jnp.asarray(seq[:, :-1]),
        "targets": jnp.asarray(seq[:, 1:]),
        "loss_mask": jnp.ones((4, 16), jnp.float32),
        "positions": jnp.broadcast_to(jnp.arange(16, dtype=jnp.int32), (4, 16)),
        "segment_ids": jnp.ones((4, 16), jnp.int32),
    }
    first = None
    for _ in range(300):
        state, metrics = step(state, batch)
        first = float(metrics["loss"]) if first is None else first
        if float(metrics["loss"]) < 0.05:
            break
    assert first > 3.0  # ~log(64) at init: the model starts from chance
    assert float(metrics["loss"]) < 0.05, f"loss {float(metrics['loss']):.3f} after {int(state.step)} steps"

"""``LLMConfig.attention_impl`` / ``logprob_impl``: the model on ``stepjax.kernels`` computes what it computes on XLA.

Every kernel case is checked against the default path on the same weights and inputs (float32, highest matmul
precision): logits, loss and every parameter's gradient for a tiny GQA DecoderLM on packed rows (two samples and
padding per row, positions restarting at 0) with RoPE, linear ALiBi and square-root ALiBi; the chunked log-prob
loss (several vocabulary chunks, the last one partial) against full logits; greedy sampling; and one sharded
train step on a 2x2x2 mesh of fake CPU devices against one device. Pallas runs in interpret mode on CPU. The
jaxprs are checked to really contain the kernels (``pallas_call``, under ``shard_map`` on the mesh), so a flag
that silently fell back to XLA would fail.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from stepjax.models.llm import DecoderLM, LLMConfig, llm_preset
from stepjax.nn import Attention
from stepjax.sampling import SamplingConfig, generate
from stepjax.sharding import DEFAULT_RULES, batch_sharding, make_mesh, shard_batch, use_rules
from stepjax.train.lm_head import target_is_argmax
from stepjax.train.state import create_train_state
from stepjax.train.step import jit_train_step, lm_loss_fn, make_train_step

VOCAB = 64
ATOL = 1e-5


def _cfg(**overrides) -> LLMConfig:
    # GQA 4/2; initializer_range 0.1 so logits are O(1) and the tolerances mean something.
    base = dict(
        vocab_size=VOCAB, hidden_size=32, num_layers=1, num_heads=4, num_kv_heads=2, mlp_dim=64, initializer_range=0.1
    )
    return llm_preset("tiny", **{**base, **overrides})


def _packed_batch(batch: int = 2, length: int = 12, vocab: int = VOCAB) -> dict[str, np.ndarray]:
    """Each row: a 6-token sample, a 4-token sample, 2 padding slots (segment 0); some targets masked."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, vocab, (batch, length + 1), dtype=np.int32)
    positions = np.array(list(range(6)) + list(range(4)) + [0, 0], np.int32)
    segments = np.array([1] * 6 + [2] * 4 + [0, 0], np.int32)
    mask = (rng.random((batch, length)) > 0.2) & (segments > 0)
    return {
        "inputs": tokens[:, :-1],
        "targets": tokens[:, 1:],
        "loss_mask": mask.astype(np.float32),
        "positions": np.broadcast_to(positions, (batch, length)).copy(),
        "segment_ids": np.broadcast_to(segments, (batch, length)).copy(),
    }


def _loss_logits_grads(cfg: LLMConfig, batch, *, z_loss: float = 0.0, chunk_size: int = 4096, logits: bool = True):
    """``(metrics {term: value}, logits or None, grads)`` of the LM loss, one jit; and the jaxpr's text."""
    graphdef, state = nnx.split(DecoderLM(cfg, rngs=nnx.Rngs(0)))
    loss_fn = lm_loss_fn(z_loss=z_loss, chunk_size=chunk_size)

    def objective(state):
        model = nnx.merge(graphdef, state)
        terms = loss_fn(model, batch, None)
        values = {k: t.total / t.denominator for k, t in terms.items()}
        loss = values["lm"] + values.get("z_loss", 0.0)
        out = model(batch["inputs"], batch["positions"], batch["segment_ids"]) if logits else None
        return loss, (values, out)

    traced = jax.jit(jax.value_and_grad(objective, has_aux=True)).trace(state)
    (_, (values, out)), grads = traced.lower().compile()(state)
    return values, None if out is None else np.asarray(out), _flat(grads), str(traced.jaxpr)


def _flat(tree) -> dict[str, np.ndarray]:
    return {"/".join(map(str, p)): np.asarray(jax.device_get(v.get_value())) for p, v in nnx.to_flat_state(tree)}


def _assert_trees_close(actual: dict, expected: dict, what: str) -> None:
    assert actual.keys() == expected.keys()
    # The comparison has teeth: the gradients are far from zero.
    assert max(np.abs(g).max() for g in expected.values()) > 1e-3
    for key in expected:
        np.testing.assert_allclose(actual[key], expected[key], atol=ATOL, rtol=0, err_msg=f"{what} {key}")


# ------------------------------------------------------------------------------------------------ config


def test_bad_choices_are_named():
    with pytest.raises(ValueError, match="attention_impl"):
        _cfg(attention_impl="flash")
    with pytest.raises(ValueError, match="logprob_impl"):
        _cfg(logprob_impl="naive")
    with pytest.raises(ValueError, match="impl"):
        Attention(32, 4, 2, 8, rngs=nnx.Rngs(0), impl="cudnn")


def test_defaults_keep_the_xla_path():
    cfg = llm_preset("tiny")
    assert (cfg.attention_impl, cfg.logprob_impl) == ("xla", "full")


# ------------------------------------------------------------------------------------- training forward/backward


@pytest.fixture(scope="module")
def xla_runs():
    cache = {}

    def get(position: str):
        if position not in cache:
            cache[position] = _loss_logits_grads(_cfg(position=position), _packed_batch())
        return cache[position]

    return get


@pytest.mark.parametrize(
    ("position", "impl"),
    [
        # Each case compiles a forward + backward (~4-8 s on 2 busy cores); linear ALiBi shares the kernels' code
        # with the square-root one, so it and the reference on sqrt-ALiBi are in the slow set.
        ("rope", "reference"),
        ("rope", "pallas"),
        ("sqrt_alibi", "pallas"),
        pytest.param("sqrt_alibi", "reference", marks=pytest.mark.slow),
        pytest.param("alibi", "reference", marks=pytest.mark.slow),
        pytest.param("alibi", "pallas", marks=pytest.mark.slow),
    ],
)
def test_attention_impl_matches_xla(xla_runs, position, impl):
    values, logits, grads, jaxpr = _loss_logits_grads(_cfg(position=position, attention_impl=impl), _packed_batch())
    ref_values, ref_logits, ref_grads, ref_jaxpr = xla_runs(position)
    assert ("pallas_call" in jaxpr) == (impl == "pallas") and "pallas_call" not in ref_jaxpr
    np.testing.assert_allclose(logits, ref_logits, atol=ATOL, rtol=0)
    for k in ref_values:
        np.testing.assert_allclose(values[k], ref_values[k], atol=ATOL, rtol=0, err_msg=k)
    _assert_trees_close(grads, ref_grads, "grad")


# ------------------------------------------------------------------------------------------- fused log-prob


@pytest.mark.parametrize(
    ("tie", "impl"),
    # The untied head is also covered (vocab-parallel) by the sharded test below.
    [
        (True, "chunked"),
        pytest.param(False, "chunked", marks=pytest.mark.slow),
        pytest.param(True, "pallas", marks=pytest.mark.slow),
    ],
)
def test_logprob_impl_matches_full(tie, impl):
    batch = _packed_batch()
    # chunk 24 over 64 columns: three chunks, the last slid back over 8 columns already seen.
    kwargs = dict(z_loss=1e-2, chunk_size=24, logits=False)
    full = _loss_logits_grads(_cfg(tie_embeddings=tie), batch, **kwargs)
    fused = _loss_logits_grads(_cfg(tie_embeddings=tie, logprob_impl=impl), batch, **kwargs)
    assert set(fused[0]) == {"lm", "accuracy", "z_loss"} == set(full[0])
    for k in full[0]:
        np.testing.assert_allclose(fused[0][k], full[0][k], atol=ATOL, rtol=0, err_msg=k)
    _assert_trees_close(fused[2], full[2], "grad")


@pytest.mark.slow
def test_scanned_remat_mqa_model_with_kernels():
    """Stacked layers under ``nnx.scan`` + remat, MQA, sqrt-ALiBi: both kernels inside the scan body."""
    kw = dict(scan_layers=True, num_layers=2, remat="dots", position="sqrt_alibi", num_kv_heads=1)
    args = dict(z_loss=1e-2, chunk_size=24, logits=False)
    ref = _loss_logits_grads(_cfg(**kw), _packed_batch(), **args)
    got = _loss_logits_grads(_cfg(**kw, attention_impl="pallas", logprob_impl="chunked"), _packed_batch(), **args)
    assert "pallas_call" in got[3]
    for k in ref[0]:
        np.testing.assert_allclose(got[0][k], ref[0][k], atol=ATOL, rtol=0, err_msg=k)
    _assert_trees_close(got[2], ref[2], "grad")


def test_fused_loss_never_forms_token_by_vocab_logits():
    """The chunked loss's jaxpr (forward + backward) holds no value with tokens x vocab elements."""
    vocab = 96  # tokens x vocab is then larger than any parameter or other activation of the model
    batch = _packed_batch(batch=8)
    cfg = _cfg(vocab_size=vocab, logprob_impl="chunked")
    graphdef, state = nnx.split(DecoderLM(cfg, rngs=nnx.Rngs(0)))
    loss_fn = lm_loss_fn(chunk_size=16)

    def loss(state):
        return loss_fn(nnx.merge(graphdef, state), batch, None)["lm"].total

    tokens = batch["inputs"].size
    sizes = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            sizes.extend(int(np.prod(v.aval.shape)) for v in eqn.outvars if hasattr(v.aval, "shape"))
            for param in eqn.params.values():
                for inner in param if isinstance(param, tuple | list) else (param,):
                    inner = getattr(inner, "jaxpr", inner)  # ClosedJaxpr -> Jaxpr
                    if hasattr(inner, "eqns"):
                        walk(inner)

    walk(jax.make_jaxpr(jax.grad(loss))(state).jaxpr)
    assert sizes and max(sizes) < tokens * vocab
    # The full path does form them (so the check above can fail).
    full_fn = lm_loss_fn()
    full_graphdef, full_state = nnx.split(DecoderLM(_cfg(vocab_size=vocab), rngs=nnx.Rngs(0)))
    sizes.clear()
    walk(
        jax.make_jaxpr(jax.grad(lambda s: full_fn(nnx.merge(full_graphdef, s), batch, None)["lm"].total))(
            full_state
        ).jaxpr
    )
    assert max(sizes) >= tokens * vocab


def test_chunked_argmax_equals_argmax_with_ties():
    rng = np.random.default_rng(1)
    hidden = jnp.asarray(rng.normal(size=(3, 5, 8)), jnp.float32)
    weight = rng.normal(size=(8, 50)).astype(np.float32)
    weight[:, 40] = weight[:, 7]  # a tie across chunks (7 in chunk 0, 40 in chunk 2): argmax picks 7
    weight[:, 45] = weight[:, 44]  # a tie inside a chunk, and in the slid-back part of the last one
    weight = jnp.asarray(weight)
    logits = np.asarray(hidden @ weight)
    best = logits.argmax(-1)
    targets = np.where(rng.random(best.shape) < 0.5, best, rng.integers(0, 50, best.shape))
    targets[0, 0] = 40 if best[0, 0] == 7 else targets[0, 0]
    for chunk in (16, 50, 4096):
        got = target_is_argmax(hidden, weight, jnp.asarray(targets), chunk)
        np.testing.assert_array_equal(np.asarray(got), best == targets, err_msg=f"chunk {chunk}")
    assert (best == targets).any() and (best != targets).any()


# ----------------------------------------------------------------------------------------------- sampling


@functools.cache
def _greedy(impl: str):
    cfg = _cfg(position="sqrt_alibi", num_layers=2, attention_impl=impl)
    graphdef, state = nnx.split(DecoderLM(cfg, rngs=nnx.Rngs(3)))
    prompts = np.random.default_rng(2).integers(1, VOCAB, (2, 5)).astype(np.int32)
    out = generate(graphdef, state, prompts, np.array([5, 2]), SamplingConfig(max_new_tokens=4, greedy=True), None)
    return np.asarray(out.tokens), np.asarray(out.logprobs)


def test_greedy_sampling_with_pallas_equals_xla():
    tokens, logprobs = _greedy("pallas")
    ref_tokens, ref_logprobs = _greedy("xla")
    np.testing.assert_array_equal(tokens, ref_tokens)
    np.testing.assert_allclose(logprobs, ref_logprobs, atol=ATOL, rtol=0)


def test_decode_step_runs_the_decode_kernel():
    """One cached decode step with ``attention_impl='pallas'``: a ``pallas_call`` in its jaxpr, same logits."""
    out = {}
    for impl in ("xla", "pallas"):
        model = DecoderLM(_cfg(position="alibi", attention_impl=impl), rngs=nnx.Rngs(0))
        cache = model.init_cache(2, 8)
        _, cache = model.prefill(jnp.array([[3, 4, 5], [6, 7, 0]]), jnp.array([3, 2]), cache)
        graphdef, state = nnx.split(model)

        def step(state, cache):
            return nnx.merge(graphdef, state).decode(jnp.array([9, 10]), cache)[0]

        out[impl] = (np.asarray(jax.jit(step)(state, cache)), str(jax.make_jaxpr(step)(state, cache)))
    assert "pallas_call" in out["pallas"][1] and "pallas_call" not in out["xla"][1]
    np.testing.assert_allclose(out["pallas"][0], out["xla"][0], atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------------------------- sharded


def _recording_sgd(lr: float) -> optax.GradientTransformation:
    """SGD that keeps the last gradient in its (params-shaped, hence sharded like them) state."""

    def init(params):
        return {"grads": jax.tree.map(jnp.zeros_like, params)}

    def update(grads, state, params=None):
        return jax.tree.map(lambda g: -lr * g, grads), {"grads": grads}

    return optax.GradientTransformation(init, update)


def _train_step(cfg: LLMConfig, mesh):
    tx = _recording_sgd(0.5)
    graphdef, state = create_train_state(
        lambda rngs: DecoderLM(cfg, rngs=rngs), tx, seed=0, mesh=mesh, rules=DEFAULT_RULES
    )
    step = make_train_step(graphdef, lm_loss_fn(z_loss=1e-2, chunk_size=96), tx, loss_weights={"lm": 1.0})
    batch = _packed_batch(batch=8, vocab=256)
    if mesh is None:
        new_state, metrics = jax.jit(step)(state, batch)
        return new_state, metrics, ""
    with jax.set_mesh(mesh), use_rules(DEFAULT_RULES):
        sharded = shard_batch(batch, mesh)
        jitted = jit_train_step(step, state, batch_sharding=batch_sharding(mesh), donate=False)
        traced = jitted.trace(state, sharded)
        new_state, metrics = traced.lower().compile()(state, sharded)
    return new_state, metrics, str(traced.jaxpr)


def test_sharded_pallas_step_matches_single_device_xla(devices):
    """2x2x2 (data, fsdp, tensor): flash attention (sqrt-ALiBi slopes split over tensor) and the chunked
    vocab-parallel log-prob run under ``shard_map``; loss, z-loss, accuracy and gradients equal one device's XLA."""
    base = dict(vocab_size=256, position="sqrt_alibi")
    ref_state, ref_metrics, _ = _train_step(_cfg(**base), None)
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    cfg = _cfg(**base, attention_impl="pallas", logprob_impl="chunked")
    new_state, metrics, jaxpr = _train_step(cfg, mesh)
    assert "shard_map" in jaxpr and "pallas_call" in jaxpr
    for k in ("loss", "lm", "z_loss", "accuracy"):
        assert abs(float(metrics[k]) - float(ref_metrics[k])) < ATOL, k
    _assert_trees_close(_flat(new_state.opt_state["grads"]), _flat(ref_state.opt_state["grads"]), "grad")

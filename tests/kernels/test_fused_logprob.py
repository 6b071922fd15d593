"""Fused log-prob: chunked JAX and Pallas (interpret mode) vs the naive reference, values and gradients (through
both logp and lse); out-of-range targets; the chunked path never materialises [tokens, vocab] logits (jaxpr and
compiled temp memory); vocab-parallel shard_map wrapper on the 8 fake CPU devices.

Tolerances: float32 atol 1e-5 (gradients 2e-5), bfloat16 atol 1e-2 (gradients 2e-2). The loss is a token mean, as
in training, so gradients are O(1/tokens) and a bf16 ulp of them is well under the tolerance.
"""

import os

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from stepjax.kernels.fused_logprob import (
    fused_logprob,
    fused_logprob_chunked,
    fused_logprob_pallas,
    fused_logprob_reference,
    fused_logprob_sharded,
)
from stepjax.sharding import make_mesh

# Interpret mode on CPU (the default, CI); STEPJAX_PALLAS_COMPILED=1 with JAX_PLATFORMS=cuda|tpu runs the same
# comparisons with the kernels compiled for the accelerator (benchmarks/gpu_checks.sh).
INTERPRET = os.environ.get("STEPJAX_PALLAS_COMPILED", "") != "1"

TOL = {jnp.float32: 1e-5, jnp.bfloat16: 1e-2}


def _inputs(lead, d, vocab, dtype, seed=0):
    kh, kw, kt = jax.random.split(jax.random.key(seed), 3)
    hidden = jax.random.normal(kh, (*lead, d)).astype(dtype)
    weight = (jax.random.normal(kw, (d, vocab)) * d**-0.5 * 2).astype(dtype)
    targets = jax.random.randint(kt, lead, 0, vocab)
    return hidden, weight, targets


def _value_and_grads(fn, hidden, weight):
    """Token-mean of logp plus a z-loss-like 0.1 * mean(lse^2) (so both outputs carry gradient)."""

    def loss(h, w):
        lp, lse = fn(h, w)
        return jnp.mean(lp) + 0.1 * jnp.mean(lse**2), (lp, lse)

    (_, (lp, lse)), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(hidden, weight)
    return lp, lse, grads


def _close(got, want, atol, what):
    err = float(np.max(np.abs(np.asarray(got, np.float32) - np.asarray(want, np.float32))))
    assert err <= atol, f"{what}: max abs error {err:.3g} > {atol}"


IMPLS = {
    "chunked": lambda h, w, t, **kw: fused_logprob_chunked(h, w, t, chunk_size=64, return_lse=True, **kw),
    "pallas": lambda h, w, t, **kw: fused_logprob_pallas(h, w, t, interpret=INTERPRET, return_lse=True, **kw),
}


@pytest.mark.parametrize(
    "impl,dtype,scoring",
    [
        ("chunked", jnp.float32, {}),
        ("chunked", jnp.float32, dict(temperature=0.7, soft_cap=3.0)),
        ("chunked", jnp.bfloat16, dict(temperature=0.7)),
        ("pallas", jnp.float32, {}),
        ("pallas", jnp.float32, dict(temperature=0.7, soft_cap=3.0)),
        ("pallas", jnp.bfloat16, dict(temperature=0.7)),
    ],
)
def test_matches_reference(impl, dtype, scoring):
    # [2, 19] tokens (38: not a whole 16-token tile), d 24 (padded to 32 by Pallas), vocab 300 (not a whole
    # 64-chunk or 128-tile: the chunked path slides its last chunk back, Pallas pads).
    hidden, weight, targets = _inputs((2, 19), 24, 300, dtype)
    fn = IMPLS[impl]
    lp, lse, grads = _value_and_grads(lambda h, w: fn(h, w, targets, **scoring), hidden, weight)
    rlp, rlse, rgrads = _value_and_grads(
        lambda h, w: fused_logprob_reference(h, w, targets, return_lse=True, **scoring), hidden, weight
    )
    assert lp.shape == (2, 19) and lp.dtype == jnp.float32
    tol = TOL[dtype]
    _close(lp, rlp, tol, "logp")
    _close(lse, rlse, tol, "lse")
    for name, g, rg in zip(("hidden", "weight"), grads, rgrads, strict=True):
        assert g.dtype == dtype
        _close(g, rg, 2 * tol, f"d{name}")


def test_reference_is_log_softmax():
    hidden, weight, targets = _inputs((13,), 8, 50, jnp.float32)
    logits = np.asarray(hidden, np.float64) @ np.asarray(weight, np.float64) / 0.5
    logz = np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1)) + logits.max(-1)
    want = logits[np.arange(13), np.asarray(targets)] - logz
    _close(fused_logprob_reference(hidden, weight, targets, temperature=0.5), want, 1e-5, "closed form")


@pytest.mark.parametrize("impl", ["reference", "chunked", "pallas"])
def test_out_of_range_target_scores_zero(impl):
    """A target outside [0, vocab) has logit 0, so logp = -lse (the vocab-parallel merge relies on it)."""
    hidden, weight, _ = _inputs((16,), 16, 64, jnp.float32)
    targets = jnp.asarray([-1, 64, 1000, -50] * 4, jnp.int32)
    lp, lse = fused_logprob(hidden, weight, targets, impl=impl, return_lse=True, chunk_size=16)
    _close(lp, -lse, 1e-6, impl)


def _has_full_logits(jaxpr, n, vocab) -> bool:
    """Whether any value anywhere in the (nested) jaxpr has n * vocab or more elements with a vocab-sized axis."""
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            shape = getattr(var.aval, "shape", ())
            if vocab in shape and np.prod(shape) >= n * vocab:
                return True
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            if _has_full_logits(sub, n, vocab):
                return True
    return False


def test_chunked_never_materialises_logits():
    n, d, vocab, chunk = 256, 32, 8192, 512
    hidden, weight, targets = _inputs((n,), d, vocab, jnp.float32)

    def grad_fn(impl):
        def loss(h, w):
            return jnp.mean(fused_logprob(h, w, targets, impl=impl, chunk_size=chunk))

        return jax.value_and_grad(loss, argnums=(0, 1))

    naive_jaxpr = jax.make_jaxpr(grad_fn("reference"))(hidden, weight).jaxpr
    chunked_jaxpr = jax.make_jaxpr(grad_fn("chunked"))(hidden, weight).jaxpr
    assert _has_full_logits(naive_jaxpr, n, vocab)  # the detector sees the naive logits...
    assert not _has_full_logits(chunked_jaxpr, n, vocab)  # ...and none in the chunked version

    logits_bytes = n * vocab * 4
    temp = {
        impl: jax.jit(grad_fn(impl)).lower(hidden, weight).compile().memory_analysis().temp_size_in_bytes
        for impl in ("reference", "chunked")
    }
    assert temp["reference"] >= logits_bytes
    assert temp["chunked"] < logits_bytes / 4, temp


def test_dispatcher():
    hidden, weight, targets = _inputs((8,), 16, 32, jnp.float32)
    jaxpr = str(jax.make_jaxpr(lambda h, w: fused_logprob(h, w, targets))(hidden, weight))
    if jax.default_backend() == "cpu":
        assert "pallas_call" not in jaxpr and "scan" in jaxpr  # CPU: auto is the chunked JAX path
    else:
        assert "pallas_call" in jaxpr
    with pytest.raises(ValueError, match="impl must be one of"):
        fused_logprob(hidden, weight, targets, impl="naive")
    with pytest.raises(ValueError, match="targets must be"):
        fused_logprob(hidden, weight, targets[:4])
    with pytest.raises(ValueError, match="temperature must be > 0"):
        fused_logprob(hidden, weight, targets, temperature=0.0)


@pytest.mark.parametrize("impl", ["chunked", "pallas"])
def test_vocab_parallel_shard_map_equals_unsharded(devices, impl):
    """Tokens over data x fsdp, vocabulary over tensor (2 x 2 x 2): same logp, lse and gradients."""
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    hidden, weight, targets = _inputs((8, 4), 16, 256, jnp.float32, seed=5)
    kw = dict(impl=impl, chunk_size=48, temperature=0.9)

    def run(sharded):
        def fn(h, w):
            if sharded:
                return fused_logprob_sharded(h, w, targets, mesh=mesh, return_lse=True, **kw)
            return fused_logprob(h, w, targets, return_lse=True, **kw)

        return _value_and_grads(fn, hidden, weight)

    lp, lse, grads = run(False)
    slp, slse, sgrads = run(True)
    _close(slp, lp, 1e-5, "logp")
    _close(slse, lse, 1e-5, "lse")
    for g, sg in zip(grads, sgrads, strict=True):
        _close(sg, g, 1e-6, "grad")


@pytest.mark.slow
def test_pallas_matches_reference_larger():
    """Several token, vocabulary and model-dim tiles at the default tile sizes (64 x 128 x 64)."""
    hidden, weight, targets = _inputs((300,), 160, 1000, jnp.float32, seed=9)
    scoring = dict(temperature=0.8, soft_cap=20.0)
    lp, lse, grads = _value_and_grads(
        lambda h, w: fused_logprob_pallas(h, w, targets, interpret=INTERPRET, return_lse=True, **scoring),
        hidden,
        weight,
    )
    rlp, rlse, rgrads = _value_and_grads(
        lambda h, w: fused_logprob_reference(h, w, targets, return_lse=True, **scoring), hidden, weight
    )
    _close(lp, rlp, 1e-5, "logp")
    _close(lse, rlse, 1e-5, "lse")
    for g, rg in zip(grads, rgrads, strict=True):
        _close(g, rg, 2e-5, "grad")

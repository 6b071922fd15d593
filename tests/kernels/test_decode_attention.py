"""Decode attention: split-K Pallas kernel (interpret mode) vs the jnp reference; reference vs the model's attention
on the cache prefix; zero rows; in-place cache reads; shard_map wrapper on the 8 fake CPU devices.

Tolerances: float32 atol 1e-5, bfloat16 atol 1e-2 (inputs scaled so outputs stay below ~1).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stepjax.kernels.decode_attention import (
    decode_attention,
    decode_attention_pallas,
    decode_attention_reference,
    decode_attention_sharded,
)
from stepjax.nn.attention import dot_product_attention
from stepjax.nn.positions import alibi_bias, alibi_slopes
from stepjax.sharding import make_mesh

# Interpret mode on CPU (the default, CI); STEPJAX_PALLAS_COMPILED=1 with JAX_PLATFORMS=cuda|tpu runs the same
# comparisons with the kernels compiled for the accelerator (benchmarks/gpu_checks.sh).
INTERPRET = os.environ.get("STEPJAX_PALLAS_COMPILED", "") != "1"

TOL = {jnp.float32: 1e-5, jnp.bfloat16: 1e-2}


def _inputs(b, m, h, kvh, d, dtype, seed=0):
    kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
    scale = 1.0 if dtype == jnp.float32 else 0.5
    q = (jax.random.normal(kq, (b, h, d)) * scale).astype(dtype)
    k = (jax.random.normal(kk, (b, m, kvh, d)) * scale).astype(dtype)
    v = (jax.random.normal(kv, (b, m, kvh, d)) * scale).astype(dtype)
    return q, k, v


def _close(got, want, atol, what):
    err = float(np.max(np.abs(np.asarray(got, np.float32) - np.asarray(want, np.float32))))
    assert err <= atol, f"{what}: max abs error {err:.3g} > {atol}"


@pytest.mark.parametrize(
    "h,kvh,d,alibi,splits,dtype",
    [
        (4, 2, 16, None, None, jnp.float32),
        (4, 1, 16, "linear", 3, jnp.float32),
        (4, 2, 8, "sqrt", 1, jnp.float32),  # head_dim 8: padded copy of the cache path
        (4, 2, 16, "sqrt", 2, jnp.bfloat16),
    ],
)
def test_pallas_matches_reference(h, kvh, d, alibi, splits, dtype):
    b, m = 4, 40  # 40 slots: not a whole number of 16-slot blocks
    q, k, v = _inputs(b, m, h, kvh, d, dtype)
    lengths = jnp.asarray([1, 17, 40, 32], jnp.int32)  # one slot, mid-block, full, block boundary
    kw = {}
    if alibi:
        kw = dict(alibi_slopes=jnp.asarray(alibi_slopes(h), jnp.float32), alibi_sqrt=alibi == "sqrt")
    got = jax.jit(lambda *a: decode_attention_pallas(*a, block_k=16, num_splits=splits, interpret=INTERPRET, **kw))(
        q, k, v, lengths
    )
    want = decode_attention_reference(q, k, v, lengths, **kw)
    assert got.dtype == dtype and got.shape == q.shape
    _close(got, want, TOL[dtype], "decode output")


@pytest.mark.parametrize("alibi", [None, "sqrt"])
def test_reference_matches_model_attention_on_prefix(alibi):
    """Row with length L == the model's attention of query position L-1 over keys 0..L-1 (ALiBi from positions)."""
    b, m, h, kvh, d = 3, 24, 4, 2, 8
    q, k, v = _inputs(b, m, h, kvh, d, jnp.float32, seed=1)
    lengths = np.array([5, 24, 11])
    kw = {}
    if alibi:
        kw = dict(alibi_slopes=jnp.asarray(alibi_slopes(h), jnp.float32), alibi_sqrt=True)
    got = decode_attention_reference(q, k, v, jnp.asarray(lengths, jnp.int32), **kw)
    for r, length in enumerate(lengths):
        bias = None
        if alibi:
            bias = alibi_bias(
                jnp.asarray([[length - 1]]), jnp.arange(length)[None], jnp.asarray(alibi_slopes(h)), sqrt=True
            )
        want = dot_product_attention(q[r : r + 1, None], k[r : r + 1, :length], v[r : r + 1, :length], bias=bias)
        _close(got[r], want[0, 0], 1e-6, f"row {r}")


def test_zero_length_rows_are_zero():
    q, k, v = _inputs(2, 32, 2, 1, 16, jnp.float32)
    lengths = jnp.asarray([0, 7], jnp.int32)
    for impl in ("reference", "pallas"):
        out = decode_attention(q, k, v, lengths, impl=impl, block_k=16, num_splits=2)
        assert np.all(np.asarray(out[0]) == 0.0), impl
        assert np.all(np.isfinite(np.asarray(out)))


def test_cache_read_in_place():
    """With a power-of-two head_dim and whole blocks, no cache-sized pad/transpose/copy precedes the kernel."""
    b, m, h, kvh, d = 2, 64, 4, 2, 16
    q, k, v = _inputs(b, m, h, kvh, d, jnp.float32)
    jaxpr = jax.make_jaxpr(lambda *a: decode_attention_pallas(*a, block_k=16, interpret=INTERPRET))(
        q, k, v, jnp.full((b,), m, jnp.int32)
    )
    cache_size = k.size
    copies = [
        e.primitive.name
        for e in jaxpr.eqns
        if e.primitive.name in ("pad", "transpose", "concatenate", "copy", "copy_p", "gather")
        and any(np.prod(o.aval.shape) >= cache_size for o in e.outvars)
    ]
    assert not copies, f"cache-sized copies before the kernel: {copies}"


def test_dispatcher():
    q, k, v = _inputs(1, 16, 2, 1, 16, jnp.float32)
    lengths = jnp.asarray([9], jnp.int32)
    auto = str(jax.make_jaxpr(lambda *a: decode_attention(*a))(q, k, v, lengths))
    assert ("pallas_call" in auto) == (jax.default_backend() != "cpu")  # CPU: auto picks the reference
    assert "pallas_call" in str(jax.make_jaxpr(lambda *a: decode_attention(*a, impl="pallas"))(q, k, v, lengths))
    with pytest.raises(ValueError, match="lengths must be"):
        decode_attention(q, k, v, jnp.asarray([1, 2], jnp.int32))


def test_shard_map_equals_unsharded(devices):
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    b, m, h, kvh, d = 4, 32, 4, 2, 16
    q, k, v = _inputs(b, m, h, kvh, d, jnp.float32, seed=2)
    lengths = jnp.asarray([3, 32, 17, 20], jnp.int32)
    kw = dict(alibi_slopes=jnp.asarray(alibi_slopes(h), jnp.float32), alibi_sqrt=True, impl="pallas", block_k=16)
    want = decode_attention(q, k, v, lengths, **kw)
    got = jax.jit(lambda *a: decode_attention_sharded(*a, mesh=mesh, **kw))(q, k, v, lengths)
    _close(got, want, 1e-6, "sharded decode")


@pytest.mark.slow
def test_pallas_matches_reference_larger():
    """A 512-slot cache in default 128-slot tiles, default split count, 8 heads / 2 KV heads, head_dim 64."""
    b, m, h, kvh, d = 4, 512, 8, 2, 64
    q, k, v = _inputs(b, m, h, kvh, d, jnp.float32, seed=3)
    lengths = jnp.asarray([1, 128, 300, 512], jnp.int32)
    kw = dict(alibi_slopes=jnp.asarray(alibi_slopes(h), jnp.float32), alibi_sqrt=True)
    got = jax.jit(lambda *a: decode_attention_pallas(*a, interpret=INTERPRET, **kw))(q, k, v, lengths)
    _close(got, decode_attention_reference(q, k, v, lengths, **kw), 1e-5, "decode output")

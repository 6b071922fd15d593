"""Flash attention: Pallas kernel (interpret mode) vs the jnp reference, forward and gradients; reference vs the
model's attention; dispatcher; shard_map wrapper on the 8 fake CPU devices.

Tolerances (the issue's): float32 atol 1e-5 (gradients 2e-5), bfloat16 atol 1e-2 (gradients 2e-2). bfloat16 inputs
are scaled so that outputs and gradients stay below ~1, where a bf16 ulp is <= 2^-8; an absolute tolerance on
larger values would measure the format, not the kernel.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stepjax.kernels.flash_attention import (
    BlockSizes,
    flash_attention,
    flash_attention_pallas,
    flash_attention_reference,
    flash_attention_sharded,
)
from stepjax.nn.attention import attention_mask, dot_product_attention
from stepjax.nn.positions import alibi_bias, alibi_slopes
from stepjax.sharding import make_mesh

# Interpret mode on CPU (the default, CI); STEPJAX_PALLAS_COMPILED=1 with JAX_PLATFORMS=cuda|tpu runs the same
# comparisons with the kernels compiled for the accelerator (benchmarks/gpu_checks.sh).
INTERPRET = os.environ.get("STEPJAX_PALLAS_COMPILED", "") != "1"

BLOCKS = BlockSizes(16, 16, 16, 16)  # tiny tiles so that 40-long rows span several (partial) blocks
TOL = {jnp.float32: 1e-5, jnp.bfloat16: 1e-2}


def _qkv(b, tq, tk, h, kvh, d, dtype, seed=0):
    kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
    scale = 1.0 if dtype == jnp.float32 else 0.5
    q = jax.random.normal(kq, (b, tq, h, d), jnp.float32) * scale
    k = jax.random.normal(kk, (b, tk, kvh, d), jnp.float32) * scale
    v = jax.random.normal(kv, (b, tk, kvh, d), jnp.float32) * scale
    return q.astype(dtype), k.astype(dtype), v.astype(dtype)


def _packed(b, t):
    """Segment ids with two packed samples and a padding tail (segment 0), and per-sample positions."""
    seg = np.zeros((b, t), np.int32)
    pos = np.zeros((b, t), np.int32)
    for r in range(b):
        a, c = 9 + 4 * r, t - 5 - 3 * r  # first sample [0, a), second [a, c), padding [c, t)
        seg[r, :a], seg[r, a:c] = 1, 2
        pos[r, :a], pos[r, a:c], pos[r, c:] = np.arange(a), np.arange(c - a), np.arange(t - c)
    return jnp.asarray(seg), jnp.asarray(pos)


def _loss_and_grads(fn, q, k, v):
    """Value and gradients of a weighted sum of the output (a fixed random cotangent, not all-ones)."""
    ct = jax.random.normal(jax.random.key(7), q.shape, jnp.float32) / q.shape[1]

    def loss(q, k, v):
        out = fn(q, k, v)
        return jnp.sum(out.astype(jnp.float32) * ct), out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    return out, grads


def _assert_close(got, want, atol, what):
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    err = np.max(np.abs(got - want))
    assert err <= atol, f"{what}: max abs error {err:.3g} > {atol}"


CASES = {
    # name: (b, tq, tk, h, kvh, d, causal, segments, alibi)
    "causal_gqa_odd_len": (2, 40, 40, 4, 2, 8, True, False, None),
    "packed_padding_mqa": (2, 40, 40, 4, 1, 16, True, True, None),
    "alibi_linear_packed": (2, 37, 37, 4, 2, 8, True, True, "linear"),
    "alibi_sqrt_packed": (2, 40, 40, 4, 2, 8, True, True, "sqrt"),
    "noncausal_mha_cross_len": (1, 24, 40, 4, 4, 12, False, False, None),
}


def _kwargs(b, tq, tk, h, causal, segments, alibi):
    kw = dict(causal=causal)
    if segments:
        assert tq == tk
        seg, pos = _packed(b, tq)
        kw.update(q_segment_ids=seg, kv_segment_ids=seg)
    if alibi:
        kw.update(alibi_slopes=jnp.asarray(alibi_slopes(h), jnp.float32), alibi_sqrt=alibi == "sqrt")
        if segments:
            kw.update(q_positions=pos, kv_positions=pos)
    return kw


@pytest.mark.parametrize(
    "case,dtype",
    [(name, jnp.float32) for name in CASES]
    + [("alibi_sqrt_packed", jnp.bfloat16), ("causal_gqa_odd_len", jnp.bfloat16)],
)
def test_pallas_matches_reference(case, dtype):
    b, tq, tk, h, kvh, d, causal, segments, alibi = CASES[case]
    q, k, v = _qkv(b, tq, tk, h, kvh, d, dtype)
    kw = _kwargs(b, tq, tk, h, causal, segments, alibi)
    out, grads = _loss_and_grads(
        lambda q, k, v: flash_attention_pallas(q, k, v, block_sizes=BLOCKS, interpret=INTERPRET, **kw), q, k, v
    )
    ref_out, ref_grads = _loss_and_grads(lambda q, k, v: flash_attention_reference(q, k, v, **kw), q, k, v)
    assert out.dtype == dtype and out.shape == q.shape
    tol = TOL[dtype]
    _assert_close(out, ref_out, tol, f"{case} output")
    for name, g, rg in zip("qkv", grads, ref_grads, strict=True):
        assert g.dtype == dtype
        _assert_close(g, rg, 2 * tol, f"{case} d{name}")


def test_default_blocks_and_padded_head_dim():
    """Default (128) tiles shrunk to a short row, head_dim 24 padded to 32 inside the kernel."""
    q, k, v = _qkv(1, 20, 20, 2, 1, 24, jnp.float32, seed=3)
    out, grads = _loss_and_grads(
        lambda q, k, v: flash_attention_pallas(q, k, v, causal=True, interpret=INTERPRET), q, k, v
    )
    ref_out, ref_grads = _loss_and_grads(lambda q, k, v: flash_attention_reference(q, k, v, causal=True), q, k, v)
    _assert_close(out, ref_out, 1e-5, "output")
    for g, rg in zip(grads, ref_grads, strict=True):
        _assert_close(g, rg, 2e-5, "grad")


@pytest.mark.parametrize("alibi", [None, "linear", "sqrt"])
def test_reference_matches_model_attention(alibi):
    """The reference is the model's path: stepjax.nn's mask (segments + causal) and ALiBi bias, GQA 4/2."""
    b, t, h, kvh, d = 2, 40, 4, 2, 8
    q, k, v = _qkv(b, t, t, h, kvh, d, jnp.float32, seed=1)
    seg, pos = _packed(b, t)
    kw = _kwargs(b, t, t, h, True, True, alibi)
    bias = None
    if alibi:
        bias = alibi_bias(pos, pos, jnp.asarray(alibi_slopes(h)), sqrt=alibi == "sqrt")

    def model(q, k, v):
        return dot_product_attention(q, k, v, mask=attention_mask(seg, seg), bias=bias)

    out, grads = _loss_and_grads(lambda q, k, v: flash_attention_reference(q, k, v, **kw), q, k, v)
    model_out, model_grads = _loss_and_grads(model, q, k, v)
    _assert_close(out, model_out, 1e-6, "output")
    for g, mg in zip(grads, model_grads, strict=True):
        _assert_close(g, mg, 2e-6, "grad")


def test_sqrt_alibi_is_not_linear_alibi():
    """The two ALiBi variants differ (guards against the flag being dropped on the way to the kernel)."""
    q, k, v = _qkv(1, 32, 32, 2, 2, 8, jnp.float32, seed=2)
    slopes = jnp.asarray(alibi_slopes(2), jnp.float32)
    outs = [
        flash_attention_pallas(
            q, k, v, causal=True, alibi_slopes=slopes, alibi_sqrt=s, block_sizes=BLOCKS, interpret=INTERPRET
        )
        for s in (False, True)
    ]
    assert float(jnp.max(jnp.abs(outs[0] - outs[1]))) > 1e-2


def test_dispatcher():
    q, k, v = _qkv(1, 16, 16, 2, 1, 8, jnp.float32)
    auto = jax.make_jaxpr(lambda q, k, v: flash_attention(q, k, v, causal=True))(q, k, v)
    forced = jax.make_jaxpr(lambda q, k, v: flash_attention(q, k, v, causal=True, impl="pallas"))(q, k, v)
    assert ("pallas_call" in str(auto)) == (jax.default_backend() != "cpu")  # CPU: auto picks the reference
    assert "pallas_call" in str(forced)
    with pytest.raises(ValueError, match="impl must be one of"):
        flash_attention(q, k, v, impl="triton")
    with pytest.raises(ValueError, match="not a multiple of num_kv_heads"):
        flash_attention(q, k[:, :, :1].repeat(3, axis=2), v[:, :, :1].repeat(3, axis=2))
    with pytest.raises(ValueError, match="both q_segment_ids and kv_segment_ids"):
        flash_attention(q, k, v, q_segment_ids=jnp.ones((1, 16), jnp.int32))


def test_shard_map_equals_unsharded(devices):
    """Batch over data x fsdp, heads over tensor (2 x 2 x 2 = 8 devices): same output and gradients."""
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    b, t, h, kvh, d = 4, 24, 4, 2, 8
    q, k, v = _qkv(b, t, t, h, kvh, d, jnp.float32, seed=4)
    kw = _kwargs(b, t, t, h, True, True, "sqrt")
    kw.update(impl="pallas", block_sizes=BLOCKS, interpret=INTERPRET)
    out, grads = _loss_and_grads(lambda q, k, v: flash_attention(q, k, v, **kw), q, k, v)
    sh_out, sh_grads = _loss_and_grads(lambda q, k, v: flash_attention_sharded(q, k, v, mesh=mesh, **kw), q, k, v)
    _assert_close(sh_out, out, 1e-6, "output")
    for g, sg in zip(grads, sh_grads, strict=True):
        _assert_close(sg, g, 1e-6, "grad")
    with pytest.raises(ValueError, match="batch 3 is not divisible"):
        flash_attention_sharded(q[:3], k[:3], v[:3], mesh=mesh)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_pallas_matches_reference_larger(dtype):
    """Larger tiles and rows: 200 tokens in 64/32 tiles, head_dim 32, 8 heads / 2 KV heads, packed, sqrt-ALiBi."""
    b, t, h, kvh, d = 2, 200, 8, 2, 32
    q, k, v = _qkv(b, t, t, h, kvh, d, dtype, seed=11)
    kw = _kwargs(b, t, t, h, True, True, "sqrt")
    blocks = BlockSizes(64, 64, 32, 32)
    out, grads = _loss_and_grads(
        lambda q, k, v: flash_attention_pallas(q, k, v, block_sizes=blocks, interpret=INTERPRET, **kw), q, k, v
    )
    ref_out, ref_grads = _loss_and_grads(lambda q, k, v: flash_attention_reference(q, k, v, **kw), q, k, v)
    _assert_close(out, ref_out, TOL[dtype], "output")
    for g, rg in zip(grads, ref_grads, strict=True):
        _assert_close(g, rg, 2 * TOL[dtype], "grad")

"""Attention: masks and softmax against numpy, packing, GQA == repeated-KV MHA, causality, RoPE/ALiBi wiring."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from stepjax.nn import Attention, alibi_slopes, attention_mask, dot_product_attention

D, N, KV, H = 32, 6, 2, 8


def _attention(position: str = "rope", *, num_kv_heads: int = KV, seed: int = 0, **kw) -> Attention:
    """An Attention with every parameter random (biases and qk-norm scales included, so none is a no-op)."""
    attn = Attention(D, N, num_kv_heads, H, rngs=nnx.Rngs(seed), position=position, **kw)
    rng = np.random.default_rng(seed)
    for _, var in nnx.iter_graph(attn):
        if isinstance(var, nnx.Param):
            var[...] = jnp.asarray(rng.normal(size=var.shape) * 0.3 + (1.0 if var.shape == (H,) else 0.0), jnp.float32)
    return attn


@functools.partial(jax.jit, static_argnums=0)
def _apply(graphdef, state, x, positions, segment_ids):
    return nnx.merge(graphdef, state)(x, positions, segment_ids)


def _run(attn: Attention, x, positions, segment_ids) -> np.ndarray:
    """Jitted call (one compile per structure and shape; eager op-by-op dispatch is slower here)."""
    graphdef, state = nnx.split(attn)
    args = (jnp.asarray(x, jnp.float32), jnp.asarray(positions, jnp.int32), jnp.asarray(segment_ids, jnp.int32))
    return np.asarray(_apply(graphdef, state, *args))


def test_attention_mask_closed_form():
    seg = np.array([[1, 1, 1, 2, 2, 0]])
    got = np.asarray(attention_mask(jnp.asarray(seg), jnp.asarray(seg)))
    want = np.array([[seg[0, i] == seg[0, j] and j <= i for j in range(6)] for i in range(6)])
    np.testing.assert_array_equal(got[0], want)
    bidirectional = np.asarray(attention_mask(jnp.asarray(seg), jnp.asarray(seg), causal=False))
    np.testing.assert_array_equal(bidirectional[0], seg[0][:, None] == seg[0][None, :])


def test_dot_product_attention_matches_numpy():
    rng = np.random.default_rng(0)
    b, t = 2, 5
    q = rng.normal(size=(b, t, N, H)).astype(np.float32)
    k = rng.normal(size=(b, t, KV, H)).astype(np.float32)
    v = rng.normal(size=(b, t, KV, H)).astype(np.float32)
    bias = rng.normal(size=(b, N, t, t)).astype(np.float32)
    seg = np.array([[1, 1, 2, 2, 2], [1, 1, 1, 1, 0]])
    mask = np.asarray(attention_mask(jnp.asarray(seg), jnp.asarray(seg)))
    got = dot_product_attention(
        jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mask=jnp.asarray(mask), bias=jnp.asarray(bias)
    )
    want = np.zeros((b, t, N, H))
    for bi in range(b):
        for n in range(N):
            kv = n // (N // KV)  # head n reads KV group floor(n / (N / KV))
            logits = q[bi, :, n].astype(np.float64) @ k[bi, :, kv].T / np.sqrt(H) + bias[bi, n]
            logits = np.where(mask[bi], logits, -np.inf)
            p = np.exp(logits - logits.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            want[bi, :, n] = p @ v[bi, :, kv]
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)


def test_dot_product_attention_rejects_bad_grouping():
    x = jnp.zeros((1, 2, 6, 4))
    with pytest.raises(ValueError, match="multiple"):
        dot_product_attention(x, jnp.zeros((1, 2, 4, 4)), jnp.zeros((1, 2, 4, 4)))


@pytest.mark.parametrize("position", ["rope", "alibi", "sqrt_alibi", "none"])
def test_packed_equals_one_by_one(position):
    attn = _attention(position, qkv_bias=True, qk_norm=True)
    rng = np.random.default_rng(1)
    lengths = (5, 4)
    seqs = [rng.normal(size=(1, n, D)).astype(np.float32) for n in lengths]
    pad = 2
    x = np.concatenate([*seqs, rng.normal(size=(1, pad, D)).astype(np.float32)], axis=1)
    positions = np.concatenate([np.arange(n) for n in lengths] + [np.zeros(pad, int)])[None]
    segment_ids = np.concatenate([np.full(n, s + 1) for s, n in enumerate(lengths)] + [np.zeros(pad, int)])[None]
    packed = _run(attn, x, positions, segment_ids)
    start = 0
    for seq in seqs:
        n = seq.shape[1]
        alone = _run(attn, seq, np.arange(n)[None], np.ones((1, n)))
        np.testing.assert_allclose(packed[:, start : start + n], alone, atol=1e-5)
        start += n
    assert np.isfinite(packed).all()  # padding rows stay finite


@pytest.mark.parametrize("position", ["rope", "sqrt_alibi"])
def test_gqa_equals_mha_with_repeated_kv_heads(position):
    gqa = _attention(position, qkv_bias=True)
    mha = Attention(D, N, N, H, rngs=nnx.Rngs(9), position=position, qkv_bias=True)
    group = N // KV
    for name in ("q_proj", "o_proj"):
        for leaf in ("kernel", "bias"):
            src = getattr(getattr(gqa, name), leaf)
            if src is not None:
                getattr(getattr(mha, name), leaf)[...] = src[...]
    for name in ("k_proj", "v_proj"):
        # KV head g serves query heads g*group .. g*group + group - 1: repeat each head `group` times in place.
        getattr(mha, name).kernel[...] = jnp.repeat(getattr(gqa, name).kernel[...], group, axis=1)
        getattr(mha, name).bias[...] = jnp.repeat(getattr(gqa, name).bias[...], group, axis=0)
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 7, D)), jnp.float32)
    positions = jnp.broadcast_to(jnp.arange(7), (2, 7))
    seg = jnp.ones((2, 7), jnp.int32)
    np.testing.assert_allclose(_run(gqa, x, positions, seg), _run(mha, x, positions, seg), atol=1e-5)


@pytest.mark.parametrize("position", ["rope", "sqrt_alibi"])
def test_attention_is_causal(position):
    attn = _attention(position)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1, 8, D)).astype(np.float32)
    changed = x.copy()
    changed[:, 5:] = rng.normal(size=(1, 3, D))
    positions, seg = jnp.arange(8)[None], jnp.ones((1, 8), jnp.int32)
    a, b = _run(attn, x, positions, seg), _run(attn, changed, positions, seg)
    np.testing.assert_allclose(a[:, :5], b[:, :5], atol=1e-6)
    assert np.abs(a[:, 5:] - b[:, 5:]).max() > 1e-3


def test_attention_uses_alibi_bias_of_its_heads():
    # With q = k = 0 every logit is the bias alone, so head n's weights are softmax(-slope_n * sqrt(i - j)).
    attn = _attention("sqrt_alibi")
    attn.q_proj.kernel[...] = jnp.zeros_like(attn.q_proj.kernel[...])
    attn.k_proj.kernel[...] = jnp.zeros_like(attn.k_proj.kernel[...])
    t = 6
    x = jnp.asarray(np.random.default_rng(4).normal(size=(1, t, D)), jnp.float32)
    got = _run(attn, x, np.arange(t)[None], np.ones((1, t)))
    v = np.einsum("btd,dnh->btnh", np.asarray(x, np.float64), np.asarray(attn.v_proj.kernel[...], np.float64))
    slopes = alibi_slopes(N)
    out = np.zeros((t, N, H))
    for n in range(N):
        for i in range(t):
            w = np.exp(-slopes[n] * np.sqrt(i - np.arange(i + 1)))
            out[i, n] = (w / w.sum()) @ v[0, : i + 1, n // (N // KV)]
    want = np.einsum("tnh,nhd->td", out, np.asarray(attn.o_proj.kernel[...], np.float64))
    np.testing.assert_allclose(got[0], want, atol=1e-5)


def test_attention_param_axes_and_validation():
    attn = Attention(D, N, KV, H, rngs=nnx.Rngs(0))
    assert attn.q_proj.kernel.get_metadata()["logical_axes"] == ("embed", "heads", "head_dim")
    assert attn.k_proj.kernel.get_metadata()["logical_axes"] == ("embed", "kv_heads", "head_dim")
    assert attn.o_proj.kernel.get_metadata()["logical_axes"] == ("heads", "head_dim", "embed")
    assert attn.q_norm is None and attn.q_proj.bias is None
    with pytest.raises(ValueError, match="position"):
        Attention(D, N, KV, H, rngs=nnx.Rngs(0), position="learned")
    with pytest.raises(ValueError, match="multiple"):
        Attention(D, N, 4, H, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("kv_heads", [1, KV, N])
def test_bias_free_attention_custom_gradient_matches_autodiff(kv_heads):
    """Without a bias, attention takes the batched-GEMM path with a hand-written VJP; a zero bias forces the plain
    einsum path that autodiff differentiates. Values and q/k/v gradients must agree (packed, causal mask)."""
    rng = np.random.default_rng(1)
    b, t = 2, 7
    q = jnp.asarray(rng.normal(size=(b, t, N, H)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(b, t, kv_heads, H)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(b, t, kv_heads, H)), jnp.float32)
    seg = jnp.asarray([[1, 1, 1, 2, 2, 2, 0], [1, 1, 1, 1, 1, 1, 1]])
    mask = attention_mask(seg, seg)
    cotangent = jnp.asarray(rng.normal(size=(b, t, N, H)), jnp.float32)
    zero_bias = jnp.zeros((b, N, t, t), jnp.float32)

    def loss(q, k, v, bias):
        return jnp.sum(dot_product_attention(q, k, v, mask=mask, bias=bias) * cotangent)

    fast = jax.jit(jax.value_and_grad(lambda q, k, v: loss(q, k, v, None), argnums=(0, 1, 2)))(q, k, v)
    plain = jax.jit(jax.value_and_grad(lambda q, k, v: loss(q, k, v, zero_bias), argnums=(0, 1, 2)))(q, k, v)
    np.testing.assert_allclose(fast[0], plain[0], rtol=1e-5, atol=1e-5)
    for name, got, want in zip("qkv", fast[1], plain[1], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=f"d{name}")

"""RMSNorm and LayerNorm against their numpy formulas and against torch.nn.RMSNorm / torch.nn.LayerNorm."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from stepjax.nn import LayerNorm, RMSNorm, make_norm


def _inputs(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(2, 5, 16)) * 3.0 + 0.5).astype(np.float32)
    scale = rng.normal(size=16).astype(np.float32)
    bias = rng.normal(size=16).astype(np.float32)
    return x, scale, bias


def test_rms_norm_matches_numpy():
    x, scale, _ = _inputs()
    norm = RMSNorm(16, rngs=nnx.Rngs(0), eps=1e-5)
    norm.scale[...] = jnp.asarray(scale)
    x64 = x.astype(np.float64)
    want = x64 / np.sqrt(np.mean(x64**2, axis=-1, keepdims=True) + 1e-5) * scale
    np.testing.assert_allclose(np.asarray(norm(jnp.asarray(x))), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("use_bias", [True, False])
def test_layer_norm_matches_numpy(use_bias):
    x, scale, bias = _inputs(1)
    norm = LayerNorm(16, rngs=nnx.Rngs(0), eps=1e-5, use_bias=use_bias)
    norm.scale[...] = jnp.asarray(scale)
    if use_bias:
        norm.bias[...] = jnp.asarray(bias)
    else:
        assert norm.bias is None
    x64 = x.astype(np.float64)
    mean = x64.mean(-1, keepdims=True)
    var = ((x64 - mean) ** 2).mean(-1, keepdims=True)
    want = (x64 - mean) / np.sqrt(var + 1e-5) * scale + (bias if use_bias else 0.0)
    np.testing.assert_allclose(np.asarray(norm(jnp.asarray(x))), want, rtol=1e-5, atol=1e-5)


def test_norms_compute_statistics_in_float32_for_bf16():
    # Large-offset inputs: a bf16 mean/variance would lose most of the signal.
    x, _, _ = _inputs(2)
    x = x + 100.0
    ref = LayerNorm(16, rngs=nnx.Rngs(0))
    low = LayerNorm(16, rngs=nnx.Rngs(0), dtype=jnp.bfloat16)
    out = low(jnp.asarray(x))
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref(jnp.asarray(x))), atol=3e-2)
    rms = RMSNorm(16, rngs=nnx.Rngs(0), dtype=jnp.bfloat16)(jnp.asarray(x))
    assert rms.dtype == jnp.bfloat16


def test_make_norm_kinds():
    assert isinstance(
        make_norm("rms", 8, rngs=nnx.Rngs(0), eps=1e-6, dtype=jnp.float32, param_dtype=jnp.float32), RMSNorm
    )
    assert isinstance(
        make_norm("layer", 8, rngs=nnx.Rngs(0), eps=1e-6, dtype=jnp.float32, param_dtype=jnp.float32), LayerNorm
    )
    with pytest.raises(ValueError, match="batch"):
        make_norm("batch", 8, rngs=nnx.Rngs(0), eps=1e-6, dtype=jnp.float32, param_dtype=jnp.float32)


def test_norm_params_carry_logical_axes():
    norm = RMSNorm(8, rngs=nnx.Rngs(0), axis_name="head_dim")
    assert norm.scale.get_metadata()["logical_axes"] == ("head_dim",)


@pytest.mark.parity
def test_norms_match_torch():
    torch = pytest.importorskip("torch")
    x, scale, bias = _inputs(3)
    rms = RMSNorm(16, rngs=nnx.Rngs(0), eps=1e-6)
    rms.scale[...] = jnp.asarray(scale)
    t_rms = torch.nn.RMSNorm(16, eps=1e-6)
    ln = LayerNorm(16, rngs=nnx.Rngs(0), eps=1e-5)
    ln.scale[...], ln.bias[...] = jnp.asarray(scale), jnp.asarray(bias)
    t_ln = torch.nn.LayerNorm(16, eps=1e-5)
    with torch.no_grad():
        t_rms.weight.copy_(torch.from_numpy(scale))
        t_ln.weight.copy_(torch.from_numpy(scale))
        t_ln.bias.copy_(torch.from_numpy(bias))
        want_rms = t_rms(torch.from_numpy(x)).numpy()
        want_ln = t_ln(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.asarray(rms(jnp.asarray(x))), want_rms, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ln(jnp.asarray(x))), want_ln, atol=1e-5)

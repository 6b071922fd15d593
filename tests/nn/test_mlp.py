"""Feed-forward blocks against numpy formulas."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from stepjax.nn import MLP


def _np_silu(x):
    return x / (1.0 + np.exp(-x))


def _np_gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _np_gelu_erf(x):
    from math import erf

    return 0.5 * x * (1.0 + np.vectorize(erf)(x / math.sqrt(2.0)))


def _randomise(mlp: MLP, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    weights = {}
    for name in ("gate_proj", "up_proj", "down_proj"):
        layer = getattr(mlp, name)
        if layer is None:
            continue
        w = (rng.normal(size=layer.kernel.shape) * 0.3).astype(np.float32)
        layer.kernel[...] = jnp.asarray(w)
        weights[name] = w.astype(np.float64)
        if layer.bias is not None:
            b = rng.normal(size=layer.bias.shape).astype(np.float32)
            layer.bias[...] = jnp.asarray(b)
            weights[name + "_bias"] = b.astype(np.float64)
    return weights


def _lin(x, w, name):
    return x @ w[name] + w.get(name + "_bias", 0.0)


@pytest.mark.parametrize("use_bias", [False, True])
def test_swiglu_matches_numpy(use_bias):
    mlp = MLP(16, 40, rngs=nnx.Rngs(0), kind="swiglu", use_bias=use_bias)
    w = _randomise(mlp, 0)
    x = np.random.default_rng(1).normal(size=(2, 3, 16)).astype(np.float32)
    x64 = x.astype(np.float64)
    want = _lin(_np_silu(_lin(x64, w, "gate_proj")) * _lin(x64, w, "up_proj"), w, "down_proj")
    np.testing.assert_allclose(np.asarray(mlp(jnp.asarray(x))), want, atol=1e-4, rtol=1e-4)


def test_geglu_uses_tanh_gelu():
    mlp = MLP(16, 24, rngs=nnx.Rngs(0), kind="geglu")
    w = _randomise(mlp, 2)
    x = np.random.default_rng(3).normal(size=(4, 16))
    want = (_np_gelu_tanh(x @ w["gate_proj"]) * (x @ w["up_proj"])) @ w["down_proj"]
    np.testing.assert_allclose(np.asarray(mlp(jnp.asarray(x, jnp.float32))), want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind, act", [("gelu", _np_gelu_erf), ("relu", lambda v: np.maximum(v, 0.0))])
def test_plain_mlps_match_numpy(kind, act):
    mlp = MLP(16, 24, rngs=nnx.Rngs(0), kind=kind)
    assert mlp.gate_proj is None
    w = _randomise(mlp, 4)
    x = np.random.default_rng(5).normal(size=(4, 16))
    want = act(x @ w["up_proj"]) @ w["down_proj"]
    np.testing.assert_allclose(np.asarray(mlp(jnp.asarray(x, jnp.float32))), want, atol=1e-4, rtol=1e-4)


def test_mlp_kernel_axes_and_unknown_kind():
    mlp = MLP(8, 16, rngs=nnx.Rngs(0))
    assert mlp.gate_proj.kernel.get_metadata()["logical_axes"] == ("embed", "mlp")
    assert mlp.down_proj.kernel.get_metadata()["logical_axes"] == ("mlp", "embed")
    with pytest.raises(ValueError, match="swish"):
        MLP(8, 16, rngs=nnx.Rngs(0), kind="swish")

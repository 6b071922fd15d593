"""Dense einsum layers: logical axes on parameters, and the hand-written VJP against autodiff."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from stepjax.nn.linear import Einsum, dense_einsum, linear


def test_linear_carries_logical_axes_and_computes_x_at_kernel_plus_bias():
    layer = linear(6, 7, ("embed", "mlp"), rngs=nnx.Rngs(0), use_bias=True)
    assert layer.kernel.get_metadata()["logical_axes"] == ("embed", "mlp")
    assert layer.bias.get_metadata()["logical_axes"] == ("mlp",)
    layer.bias[...] = jnp.arange(7, dtype=jnp.float32)
    x = np.random.default_rng(0).normal(size=(3, 6)).astype(np.float32)
    want = x.astype(np.float64) @ np.asarray(layer.kernel[...], np.float64) + np.arange(7)
    np.testing.assert_allclose(np.asarray(layer(jnp.asarray(x))), want, atol=1e-5)
    with pytest.raises(ValueError, match="differ in rank"):
        Einsum("btd,dnh->btnh", (6, 3, 4), ("embed", "heads"), rngs=nnx.Rngs(0))


@pytest.mark.parametrize(
    ("equation", "x_shape", "k_shape"),
    [
        ("...d,df->...f", (2, 5, 6), (6, 7)),
        ("...d,df->...f", (4, 6), (6, 7)),
        ("btd,dnh->btnh", (2, 5, 6), (6, 3, 4)),
        ("btnh,nhd->btd", (2, 5, 3, 4), (3, 4, 6)),
    ],
)
def test_dense_einsum_values_and_gradients_match_autodiff(equation, x_shape, k_shape):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=k_shape), jnp.float32)
    y_shape = jnp.einsum(equation, x, kernel).shape
    cotangent = jnp.asarray(rng.normal(size=y_shape), jnp.float32)
    fast = jax.value_and_grad(lambda a, b: jnp.sum(dense_einsum(equation, a, b) * cotangent), argnums=(0, 1))
    plain = jax.value_and_grad(lambda a, b: jnp.sum(jnp.einsum(equation, a, b) * cotangent), argnums=(0, 1))
    (v1, (dx1, dk1)), (v2, (dx2, dk2)) = jax.jit(fast)(x, kernel), jax.jit(plain)(x, kernel)
    np.testing.assert_allclose(v1, v2, rtol=1e-5)
    np.testing.assert_allclose(dx1, dx2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dk1, dk2, rtol=1e-5, atol=1e-5)

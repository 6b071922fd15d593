"""The token draw's fast reductions pick exactly what ``jnp.argmax`` / ``jax.random.categorical`` pick."""

import jax
import jax.numpy as jnp
import numpy as np

from stepjax.sampling import SamplingConfig, choose, warp
from stepjax.sampling.processors import first_argmax, gumbel_categorical


def test_first_argmax_equals_argmax_with_ties_infinities_and_nans():
    rng = np.random.default_rng(0)
    x = rng.integers(-3, 3, (64, 37)).astype(np.float32)  # many ties: the first index must win
    x[5] = -np.inf  # every entry masked: argmax says 0
    x[6, [3, 20]] = np.inf
    x[7, [11, 30]] = np.nan  # the first NaN wins, as in jnp.argmax
    x[8, 0] = np.nan
    x[9, 36] = np.nan
    got = jax.jit(first_argmax)(jnp.asarray(x))
    assert got.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(got), np.asarray(jnp.argmax(jnp.asarray(x), axis=-1)))
    assert list(np.asarray(got)[[5, 6, 7, 8, 9]]) == [0, 3, 11, 0, 36]


def test_gumbel_categorical_draws_the_same_tokens_as_jax_random_categorical():
    rng = np.random.default_rng(1)
    logits = (rng.standard_normal((48, 259)) * 3).astype(np.float32)
    logits[:, rng.integers(0, 259, 40)] = -np.inf  # masked tokens (top-k / top-p) are never drawn
    logits = jnp.asarray(logits)
    ours = jax.jit(gumbel_categorical)
    theirs = jax.jit(lambda k, x: jax.random.categorical(k, x, axis=-1))
    for seed in range(20):
        key = jax.random.key(seed)
        np.testing.assert_array_equal(np.asarray(ours(key, logits)), np.asarray(theirs(key, logits)))


def test_choose_samples_the_categorical_of_the_warped_logits():
    rng = np.random.default_rng(2)
    logits = jnp.asarray(rng.standard_normal((32, 50)).astype(np.float32))
    config = SamplingConfig(temperature=0.8, top_k=20, top_p=0.9)
    key = jax.random.key(3)
    tokens, dist = jax.jit(lambda k, x: choose(k, x, config))(key, logits)
    np.testing.assert_array_equal(np.asarray(dist), np.asarray(warp(logits, config)))
    expected = jax.random.categorical(key, warp(logits, config), axis=-1)
    np.testing.assert_array_equal(np.asarray(tokens), np.asarray(expected))
    greedy, _ = choose(None, logits, SamplingConfig(greedy=True))
    np.testing.assert_array_equal(np.asarray(greedy), np.asarray(jnp.argmax(logits, axis=-1)))

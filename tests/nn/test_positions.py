"""RoPE (rotate_half layout, frequency scaling) and ALiBi (linear and sqrt) against closed forms in numpy."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from stepjax.nn import alibi_bias, alibi_slopes, apply_rope, register_rope_scaling, rope_inv_freq

# ----------------------------------------------------------------------------------------------- RoPE


def rope_reference(x: np.ndarray, positions: np.ndarray, theta: float) -> np.ndarray:
    """Explicit float64 rotation of the pairs (x[i], x[i + d/2]) by positions * theta^(-2i/d)."""
    d = x.shape[-1]
    out = np.empty_like(x, dtype=np.float64)
    for i in range(d // 2):
        freq = theta ** (-2.0 * i / d)
        angle = positions[:, :, None].astype(np.float64) * freq  # [b, t, 1]
        c, s = np.cos(angle), np.sin(angle)
        a, bb = x[..., i].astype(np.float64), x[..., i + d // 2].astype(np.float64)
        out[..., i] = a * c - bb * s
        out[..., i + d // 2] = a * s + bb * c
    return out


def test_rope_inv_freq_closed_form():
    got = rope_inv_freq(8, 10_000.0)
    np.testing.assert_allclose(got, [1.0, 10_000**-0.25, 10_000**-0.5, 10_000**-0.75], rtol=1e-12)


def test_rope_inv_freq_rejects_odd_head_dim_and_unknown_scaling():
    with pytest.raises(ValueError, match="even"):
        rope_inv_freq(7, 10_000.0)
    with pytest.raises(ValueError, match="no_such_scaling"):
        rope_inv_freq(8, 10_000.0, {"rope_type": "no_such_scaling"})


@pytest.mark.parametrize("theta", [10_000.0, 1_000_000.0])
def test_apply_rope_matches_explicit_rotation(theta):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 3, 16)).astype(np.float32)
    positions = np.array([[0, 1, 2, 3, 4], [7, 100, 2, 0, 513]], np.int32)
    got = apply_rope(jnp.asarray(x), jnp.asarray(positions), rope_inv_freq(16, theta))
    np.testing.assert_allclose(np.asarray(got), rope_reference(x, positions, theta), atol=2e-5, rtol=1e-5)


def test_apply_rope_position_zero_is_identity_and_keeps_dtype():
    x = np.random.default_rng(1).normal(size=(1, 4, 2, 8)).astype(np.float32)
    got = apply_rope(jnp.asarray(x, jnp.bfloat16), jnp.zeros((1, 4), jnp.int32), rope_inv_freq(8, 10_000.0))
    assert got.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(got), np.asarray(jnp.asarray(x, jnp.bfloat16)))


def test_apply_rope_preserves_norms():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 6, 4, 32)).astype(np.float32)
    positions = rng.integers(0, 4096, size=(2, 6)).astype(np.int32)
    got = np.asarray(apply_rope(jnp.asarray(x), jnp.asarray(positions), rope_inv_freq(32, 10_000.0)))
    np.testing.assert_allclose(np.linalg.norm(got, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5)


def test_rope_dot_product_depends_only_on_relative_offset():
    rng = np.random.default_rng(3)
    q = rng.normal(size=(1, 1, 1, 16)).astype(np.float32)
    k = rng.normal(size=(1, 1, 1, 16)).astype(np.float32)
    inv_freq = rope_inv_freq(16, 10_000.0)

    def score(i: int, j: int) -> float:
        qi = apply_rope(jnp.asarray(q), jnp.full((1, 1), i), inv_freq)
        kj = apply_rope(jnp.asarray(k), jnp.full((1, 1), j), inv_freq)
        return float(jnp.sum(qi * kj))

    for offset in (0, 3, 17):
        scores = [score(base + offset, base) for base in (0, 5, 40, 300)]
        np.testing.assert_allclose(scores, scores[0], atol=1e-4)
    # ... and does depend on the offset (otherwise the check above would be vacuous).
    assert abs(score(3, 0) - score(17, 0)) > 1e-2


def llama3_reference(inv_freq: np.ndarray, factor, low_freq_factor, high_freq_factor, old_context_len) -> np.ndarray:
    """Direct numpy transcription of transformers' ``_compute_llama3_parameters``."""
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    inv_freq_llama = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth_factor = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed_inv_freq = (1 - smooth_factor) * inv_freq_llama / factor + smooth_factor * inv_freq_llama
    is_medium_freq = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return np.where(is_medium_freq, smoothed_inv_freq, inv_freq_llama)


@pytest.mark.parametrize("old_len", [64, 8192])
def test_llama3_scaling_matches_hf_formula(old_len):
    head_dim, theta = 64, 500_000.0
    scaling = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": old_len,
    }
    base = 1.0 / theta ** (np.arange(0, head_dim, 2) / head_dim)
    expected = llama3_reference(base, 8.0, 1.0, 4.0, old_len)
    got = rope_inv_freq(head_dim, theta, scaling)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    # All three regimes are exercised: kept, slowed by `factor`, and smoothly interpolated.
    kept, slowed = np.isclose(got, base), np.isclose(got, base / 8.0)
    assert kept.any() and slowed.any() and (~kept & ~slowed).any()


def test_linear_scaling_and_registration():
    base = rope_inv_freq(8, 10_000.0)
    np.testing.assert_allclose(rope_inv_freq(8, 10_000.0, {"type": "linear", "factor": 4.0}), base / 4.0)

    @register_rope_scaling("test_double")
    def _double(inv_freq, params):
        return inv_freq * params["k"]

    np.testing.assert_allclose(rope_inv_freq(8, 10_000.0, {"rope_type": "test_double", "k": 2.0}), base * 2.0)


# ---------------------------------------------------------------------------------------------- ALiBi


def press_slopes(n: int) -> list[float]:
    """The reference implementation from the ALiBi paper's repository (ofirpress/attention_with_linear_biases)."""

    def power_of_2(m):
        start = 2 ** (-(2 ** -(math.log2(m) - 3)))
        return [start * start**i for i in range(m)]

    if math.log2(n).is_integer():
        return power_of_2(n)
    closest = 2 ** math.floor(math.log2(n))
    return power_of_2(closest) + press_slopes(2 * closest)[0::2][: n - closest]


def test_alibi_slopes_step1_h48():
    slopes = alibi_slopes(48)
    assert slopes.shape == (48,)
    np.testing.assert_allclose(slopes[:2], [0.8409, 0.7071], atol=1e-4)
    np.testing.assert_allclose(slopes[32], 0.917, atol=1e-3)
    np.testing.assert_allclose(slopes[:32], 2.0 ** (-np.arange(1, 33) / 4.0), rtol=1e-12)


@pytest.mark.parametrize("heads", [1, 4, 8, 12, 48])
def test_alibi_slopes_match_reference_implementation(heads):
    np.testing.assert_allclose(alibi_slopes(heads), press_slopes(heads), rtol=1e-12)


@pytest.mark.parametrize("sqrt", [False, True])
def test_alibi_bias_closed_form(sqrt):
    heads = 6
    positions = np.array([[0, 1, 2, 3, 4, 5, 6], [0, 1, 2, 0, 1, 2, 3]], np.int32)  # second row: packed restart
    got = np.asarray(alibi_bias(jnp.asarray(positions), jnp.asarray(positions), alibi_slopes(heads), sqrt=sqrt))
    assert got.shape == (2, heads, 7, 7) and got.dtype == np.float32
    slopes = alibi_slopes(heads)
    for b in range(2):
        for h in range(heads):
            for i in range(7):
                for j in range(7):
                    d = positions[b, i] - positions[b, j]
                    if d < 0:
                        continue  # future keys: masked by the causal mask, bias irrelevant
                    want = -slopes[h] * (math.sqrt(d) if sqrt else d)
                    assert got[b, h, i, j] == pytest.approx(want, rel=1e-6, abs=1e-6)
    # Future keys get no (positive) bonus.
    assert (got <= 0).all()

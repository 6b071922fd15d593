"""Model merging on small hand-checkable vectors: linear (0/1 bit-exact, 0.5 mean), task arithmetic, SLERP, TIES;
mismatches named; params-only Orbax I/O round trip."""

from __future__ import annotations

import numpy as np
import pytest

from stepjax.train.merge import (
    MergeError,
    linear_merge,
    load_params,
    save_params,
    slerp,
    task_arithmetic,
    ties_merge,
)


def _tree(seed, dtype=np.float32):
    rng = np.random.default_rng(seed)
    tree = {
        "embed": rng.normal(size=(5, 3)).astype(dtype),
        "layers": {"0": {"w": rng.normal(size=(3, 3)).astype(dtype), "b": rng.normal(size=3).astype(dtype)}},
    }
    tree["layers"]["0"]["b"][0] = -0.0  # signed zero must survive a weight-1 merge
    tree["layers"]["0"]["b"][1] = np.inf if dtype == np.float32 else 0  # so must inf (0 * inf would be NaN)
    return tree


def _leaves(tree):
    return [tree["embed"], tree["layers"]["0"]["w"], tree["layers"]["0"]["b"]]


@pytest.mark.parametrize("dtype", [np.float32, "bfloat16"])
def test_linear_weights_zero_one_are_bit_exact_and_half_is_mean(dtype):
    import ml_dtypes

    dt = ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype
    a, b = _tree(0, dt), _tree(1, dt)
    for weights, want in (([1.0, 0.0], a), ([0.0, 1.0], b)):
        merged = linear_merge([a, b], weights)
        for got, ref in zip(_leaves(merged), _leaves(want), strict=True):
            got = np.asarray(got)
            assert got.dtype == ref.dtype and got.tobytes() == ref.tobytes()
    b["layers"]["0"]["b"][1] = 0  # no inf for the mean check
    a["layers"]["0"]["b"][1] = 0
    mean = linear_merge([a, b], [0.5, 0.5])
    for got, x, y in zip(_leaves(mean), _leaves(a), _leaves(b), strict=True):
        want = ((x.astype(np.float32) + y.astype(np.float32)) / 2).astype(x.dtype)
        assert np.asarray(got).tobytes() == want.tobytes()


def test_linear_three_models_and_normalize():
    a, b, c = (np.array([1.0, 2.0, 4.0], np.float32) * k for k in (1, 2, 3))
    np.testing.assert_allclose(linear_merge([a, b, c], [0.5, 0.25, 0.25]), [1.75, 3.5, 7.0])
    np.testing.assert_allclose(linear_merge([a, b, c], [2, 1, 1], normalize=True), [1.75, 3.5, 7.0])


def test_task_arithmetic():
    base = np.array([1.0, 1.0, 1.0], np.float32)
    ft1, ft2 = np.array([2.0, 1.0, 0.0], np.float32), np.array([1.0, 3.0, 1.0], np.float32)
    np.testing.assert_allclose(task_arithmetic(base, [ft1, ft2], [1.0, 0.5]), [2.0, 2.0, 0.0])
    np.testing.assert_allclose(task_arithmetic(base, [ft1], [-1.0]), [0.0, 1.0, 2.0])  # forgetting a task
    assert np.asarray(task_arithmetic(base, [ft1, ft2], [0.0, 0.0])).tobytes() == base.tobytes()


def test_slerp_hand_checked():
    a, b = np.array([2.0, 0.0], np.float32), np.array([0.0, 2.0], np.float32)
    np.testing.assert_allclose(slerp(a, b, 0.5), [np.sqrt(2), np.sqrt(2)], rtol=1e-6)  # norm kept, not 1
    np.testing.assert_allclose(slerp(a, b, 1 / 3), [2 * np.cos(np.pi / 6), 2 * np.sin(np.pi / 6)], rtol=1e-6)
    # Nearly parallel vectors fall back to linear interpolation.
    p, q = np.array([1.0, 2.0], np.float32), np.array([2.0, 4.0], np.float32)
    np.testing.assert_allclose(slerp(p, q, 0.5), [1.5, 3.0], rtol=1e-6)
    x, y = _tree(2), _tree(3)
    for t, want in ((0.0, x), (1.0, y)):
        for got, ref in zip(_leaves(slerp(x, y, t)), _leaves(want), strict=True):
            assert np.asarray(got).tobytes() == ref.tobytes()
    with pytest.raises(MergeError, match="t must be in"):
        slerp(a, b, 1.5)


def test_ties_hand_checked():
    base = np.zeros(4, np.float32)
    ft1 = np.array([3.0, -1.0, 0.5, 2.0], np.float32)
    ft2 = np.array([-2.0, -4.0, 1.0, 1.0], np.float32)
    # density 0.5 keeps 2 entries each: tau1 -> [3, 0, 0, 2], tau2 -> [-2, -4, 0, 0]; elected signs of the sum
    # [1, -4, 0, 2] are (+, -, 0, +); only agreeing entries are averaged: [3, -4, 0, 2].
    np.testing.assert_allclose(ties_merge(base, [ft1, ft2], density=0.5), [3.0, -4.0, 0.0, 2.0])
    # Weights: tau1 x 1, tau2 x 3 -> weighted [3, 0, 0, 2] and [-6, -12, 0, 0]; sum signs (-, -, 0, +);
    # entry 0: only tau2 agrees -> -6 / 3 = -2; entry 1: -12 / 3 = -4; entry 3: 2 / 1 = 2.
    np.testing.assert_allclose(ties_merge(base, [ft1, ft2], [1.0, 3.0], density=0.5), [-2.0, -4.0, 0.0, 2.0])
    # Density 1 and agreeing signs: the plain average of the task vectors (scaled), on top of the base.
    b1 = np.ones(2, np.float32)
    np.testing.assert_allclose(
        ties_merge(b1, [b1 + np.float32([1, 2]), b1 + np.float32([3, 4])], density=1.0, scale=0.5), [2.0, 2.5]
    )


def test_mismatches_are_named():
    a = {"w": np.zeros((2, 2), np.float32)}
    with pytest.raises(MergeError, match=r"model 1: parameter w is float32\[3, 2\], expected float32\[2, 2\]"):
        linear_merge([a, {"w": np.zeros((3, 2), np.float32)}], [0.5, 0.5])
    with pytest.raises(MergeError, match="missing \\['w'\\], unexpected \\['v'\\]"):
        linear_merge([a, {"v": np.zeros((2, 2), np.float32)}], [0.5, 0.5])
    with pytest.raises(MergeError, match="1 weights for 2 models"):
        linear_merge([a, a], [1.0])


def test_orbax_round_trip_is_bit_exact(tmp_path):
    tree = _tree(4)
    save_params(tmp_path / "ckpt", tree)
    back, source = load_params(tmp_path / "ckpt")
    assert source.kind == "orbax"
    for got, want in zip(_leaves(back), _leaves(tree), strict=True):
        assert np.asarray(got).tobytes() == want.tobytes()
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        save_params(tmp_path / "ckpt", tree)

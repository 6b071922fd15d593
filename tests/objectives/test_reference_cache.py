"""Reference log-prob cache: stable keys, exact round trip, incremental fill, and named errors."""

from __future__ import annotations

import numpy as np
import pytest

from stepjax.objectives.reference_cache import ReferenceCache, cached_reference_log_probs, example_key


def test_example_key_is_stable_and_split_sensitive():
    assert example_key([1, 2], [3]) == example_key(np.array([1, 2]), (3,))
    assert example_key([1, 2], [3]) != example_key([1], [2, 3])  # lengths are part of the key
    assert len(example_key([5])) == 32


def test_round_trip_is_exact_and_incremental(tmp_path):
    path = tmp_path / "sub" / "ref.npz"
    chosen = np.array([-3.25, -1.0e-7, -123.456789], np.float32)
    rejected = np.array([-4.5, -2.0, -0.125], np.float32)
    cache = ReferenceCache(meta={"model": "m", "ld_alpha": None})
    cache.put(["a", "b", "c"], chosen, rejected)
    cache.save(path)
    back = ReferenceCache.load(path, expect_meta={"model": "m", "ld_alpha": None})
    got_c, got_r = back.get(["c", "a", "b"])
    np.testing.assert_array_equal(got_c, chosen[[2, 0, 1]])
    np.testing.assert_array_equal(got_r, rejected[[2, 0, 1]])
    # Only the new key is computed; the file then holds all four.
    asked = []
    out = cached_reference_log_probs(
        path, ["a", "d"], lambda idx: asked.append(list(idx)) or ([7.0], [8.0]), meta={"model": "m"}
    )
    assert asked == [[1]]
    np.testing.assert_array_equal(out[0], [-3.25, 7.0])
    assert len(ReferenceCache.load(path)) == 4


def test_errors_name_the_problem(tmp_path):
    cache = ReferenceCache(meta={"model": "m"})
    cache.put(["a"], [1.0], [2.0])
    path = cache.save(tmp_path / "ref.npz")
    with pytest.raises(ValueError, match="made with model='m', expected 'other'"):
        ReferenceCache.load(path, expect_meta={"model": "other"})
    with pytest.raises(KeyError, match=r"1 of 2 examples have no cached reference log-probs, e\.g\. 'zz'"):
        cache.get(["a", "zz"])
    with pytest.raises(ValueError, match=r"non-finite reference log-probs for 1 examples, e\.g\. key 'b'"):
        cache.put(["b"], [np.nan], [0.0])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ReferenceCache.load(tmp_path / "missing.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"bad\.npz is unreadable"):
        ReferenceCache.load(tmp_path / "bad.npz")

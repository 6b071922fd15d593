"""recipes.stage.params_fingerprint: the key that invalidates cached reference log-probs / offline datasets."""

import numpy as np

from recipes.stage import params_fingerprint


def test_fingerprint_follows_the_weights():
    rng = np.random.default_rng(0)
    params = {"a": rng.normal(size=(4, 3)).astype(np.float32), "b": {"c": rng.normal(size=(5,)).astype(np.float32)}}
    same = {"a": params["a"].copy(), "b": {"c": params["b"]["c"].copy()}}
    assert params_fingerprint(params) == params_fingerprint(same)
    nudged = {"a": params["a"].copy(), "b": {"c": params["b"]["c"].copy()}}
    nudged["b"]["c"][2] += 1e-3
    assert params_fingerprint(nudged) != params_fingerprint(params)

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


def test_stage_outcome_maps_how_a_stage_stopped_to_the_exit_status(capsys):
    from recipes.stage import stage_outcome
    from stepjax.train import NonFiniteLossError, Preempted

    assert stage_outcome(lambda: "state") == (0, "state")

    def preempted():
        raise Preempted(7, "/ckpt", "SIGTERM")

    def nan():
        raise NonFiniteLossError(3, {"loss": float("nan")})

    assert stage_outcome(preempted) == (0, None)
    assert "preempted by SIGTERM at step 7" in capsys.readouterr().out
    assert stage_outcome(nan) == (3, None)
    assert capsys.readouterr().out.startswith("error: non-finite loss or gradients at step 3")

"""Split-half gradient agreement: recovers a known angle between two noisy objectives, sees REINFORCE with and
without a baseline as the same direction (the baseline only lowers noise) and a different objective as different."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stepjax.evals.gradient_agreement import format_agreement, gradient_agreement


def _noisy_objectives(cos_signal: float, rows: int = 4000, dim: int = 64, noise: float = 4.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    s_a = np.zeros(dim)
    s_a[0] = 1.0
    s_b = np.zeros(dim)
    s_b[0], s_b[1] = cos_signal, np.sqrt(1 - cos_signal**2)
    per_row_a = s_a + noise * rng.standard_normal((rows, dim))
    per_row_b = 2.0 * s_b + 2.0 * noise * rng.standard_normal((rows, dim))  # another scale and noise: irrelevant
    return {"a": lambda idx: per_row_a[idx].sum(0), "b": lambda idx: per_row_b[idx].sum(0)}, np.arange(rows)


@pytest.mark.parametrize("cos_signal", [0.0, 0.5, 0.9])
def test_noise_corrected_cosine_recovers_the_angle_between_expected_gradients(cos_signal):
    objectives, groups = _noisy_objectives(cos_signal)
    result = gradient_agreement(objectives, groups)
    assert result["signal_cosine"]["a|b"] == pytest.approx(cos_signal, abs=0.08)
    # Each half has ~2000 rows of noise 4 around a unit signal: reliability well below 1, and the raw cosines are
    # attenuated by it while the corrected one is not.
    assert 0.3 < result["reliability"]["a"] < 0.8
    if cos_signal > 0.4:
        assert result["cross_half"]["a|b"] < 0.8 * cos_signal
        assert result["same_data"]["a|b"] < 0.8 * cos_signal
    assert "noise-corrected cosine" in format_agreement(result)


def _bandit_gradients(num_groups: int = 40, group_size: int = 8, seed: int = 0):
    """A softmax bandit; success arms hold ~80 % of the mass. Per sample: score function of the sampled arm."""
    logits = jnp.asarray([1.5, 1.0, 0.5, 0.0, -0.5, -1.0])
    success = np.asarray([1, 1, 1, 0, 0, 0], np.float64)
    probs = np.asarray(jax.nn.softmax(logits))
    rng = np.random.default_rng(seed)
    arms = rng.choice(len(probs), size=(num_groups, group_size), p=probs)
    r = success[arms]
    advantage = r - r.mean(1, keepdims=True)
    score = np.asarray(jax.vmap(jax.grad(lambda t, a: jax.nn.log_softmax(t)[a]), (None, 0))(logits, arms.ravel()))
    groups = np.repeat(np.arange(num_groups), group_size)
    per = {
        "rft": r.ravel()[:, None] * score,  # SFT on the successes: sum_i r_i grad log pi(a_i)
        "bcpg": advantage.ravel()[:, None] * score,  # with the group-mean baseline
        "lose": (1.0 - r.ravel())[:, None] * score,  # SFT on the failures: another direction
    }
    return {k: (lambda idx, v=v: v[idx].sum(0)) for k, v in per.items()}, groups


def test_a_baseline_changes_the_noise_not_the_direction():
    objectives, groups = _bandit_gradients()
    result = gradient_agreement(objectives, groups)
    # 40 groups of 8: RFT's direction is noisy (reliability ~0.8), yet its expected direction is BCPG's.
    assert result["signal_cosine"]["rft|bcpg"] == pytest.approx(1.0, abs=0.1)
    assert result["reliability"]["bcpg"] > result["reliability"]["rft"] + 0.05  # the control variate at work
    assert result["signal_cosine"]["rft|lose"] < -0.9  # raising failures opposes raising successes
    assert set(result) >= {"reliability_spread", "signal_cosine_spread", "same_data", "cross_half"}


def test_bad_inputs_are_refused():
    objectives, _ = _noisy_objectives(0.5, rows=10)
    with pytest.raises(ValueError, match="at least 2 groups"):
        gradient_agreement(objectives, np.zeros(10, int))
    with pytest.raises(ValueError, match="exactly zero"):
        gradient_agreement({"z": lambda idx: np.zeros(3)}, np.arange(10))
    with pytest.raises(ValueError, match="folds must be an even number"):
        gradient_agreement(objectives, np.arange(10), folds=3)


def test_each_fold_is_asked_once_and_few_groups_use_fewer_folds():
    asked = []

    def fn(rows):
        asked.append(tuple(rows))
        return np.ones(2) + rows.sum()

    result = gradient_agreement({"a": fn, "b": fn}, np.repeat(np.arange(5), 2), folds=8)  # 5 groups -> 4 folds
    assert len(asked) == 8  # 4 folds x 2 objectives
    assert sorted(r for rows in asked[:4] for r in rows) == list(range(10))  # the folds cover every row once
    assert all(len(rows) in (2, 4) and rows[0] // 2 == rows[1] // 2 for rows in asked)  # whole groups
    assert result["same_data"]["a|b"] == pytest.approx(1.0)


def test_halvings_without_a_defined_signal_cosine_are_left_out():
    """Four groups, one per fold: of the three halvings, one splits ``a`` into orthogonal halves (reliability 0, no
    noise-corrected cosine); the mean is over the other two. Halves pointing opposite ways everywhere give NaN."""
    a = np.asarray([[1.0, 1.0], [1.0, -1.0], [1.0, 1.0], [1.0, -1.0]])
    b = np.asarray([[1.0, 0.0]] * 4)
    result = gradient_agreement({"a": lambda idx: a[idx].sum(0), "b": lambda idx: b[idx].sum(0)}, np.arange(4), folds=4)
    assert result["reliability"]["a"] == pytest.approx(2 / 3)
    assert result["signal_cosine"]["a|b"] == pytest.approx(1.0)
    opposite = np.asarray([[1.0, 0.0], [-1.0, 0.0]])
    none = gradient_agreement(
        {"a": lambda idx: opposite[idx].sum(0), "b": lambda idx: b[idx].sum(0)}, np.arange(2), folds=2
    )
    assert none["reliability"]["a"] == pytest.approx(-1.0) and np.isnan(none["signal_cosine"]["a|b"])

"""Rule rewards (ORZ math, format) on parser edge cases, and score_batch's handling of failing reward functions."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from stepjax.rl.registry import REWARDS
from stepjax.rl.rewards import score_batch

ORZ = REWARDS.get("orz_math")
FMT = REWARDS.get("answer_format")
THINK = REWARDS.get("think_answer_format")


@pytest.mark.parametrize(
    ("completion", "answer", "finish", "want"),
    [
        ("<think>2+3</think> <answer>\\boxed{5}</answer>", "5", "stop", 1.0),
        ("<think>2+3</think> <answer>\\boxed{6}</answer>", "5", "stop", 0.0),
        ("<think>2+3</think> \\boxed{5}", "5", "stop", 0.0),  # no <answer> block
        ("<answer>\\boxed{5}</answer>", "5", "length", 0.0),  # truncated
        ("<answer>\\boxed{5}", "5", "stop", 0.0),  # unterminated answer block
        ("<answer>\\boxed{\\frac{1}{2}}</answer>", "0.5", "stop", 1.0),  # nested braces, rational compare
        ("<answer>\\boxed{\\dfrac{3}{4}}</answer>", "\\frac34", "stop", 1.0),
        ("<answer>\\boxed{1}</answer> then <answer>\\boxed{7}</answer>", "7", "stop", 1.0),  # last block wins
        ("<answer>\\boxed{7} or \\boxed{8}</answer>", "8", "stop", 1.0),  # last boxed in the block wins
        ("<answer>\\boxed{{x}^{2}}</answer>", "{x}^{2}", "stop", 1.0),
        ("<answer>\\boxed{5</answer>", "5", "stop", 0.0),  # unbalanced braces
    ],
)
def test_orz_math_reward(completion, answer, finish, want):
    assert ORZ(completion, answer=answer, finish_reason=finish) == want


def test_format_rewards():
    good = "<think>add the units</think> <answer>\\boxed{12}</answer>"
    assert FMT(good) == 1.0 and THINK(good) == 1.0
    assert FMT("<answer>12</answer>") == 0.0  # no boxed answer
    assert FMT(good, finish_reason="length") == 0.0
    assert FMT(good + " <answer>\\boxed{3}</answer>") == 0.0  # two answer blocks
    assert THINK("<answer>\\boxed{12}</answer>") == 0.0  # no think block
    assert THINK(good + " trailing words") == 0.0


def test_score_batch_sums_weighted_rewards():
    completions = ["<answer>\\boxed{4}</answer>", "<answer>\\boxed{5}</answer>", "<answer>5</answer>"]
    out = score_batch(["orz_math", "answer_format"], completions, answers=["4", "4", "5"], weights=[1.0, 0.5])
    np.testing.assert_array_equal(out.per_function["orz_math"], [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(out.per_function["answer_format"], [1.0, 1.0, 0.0])
    np.testing.assert_array_equal(out.rewards, [1.5, 0.5, 0.0])
    assert out.num_failures == 0


def test_raising_or_nan_reward_scores_zero_with_counted_warning(caplog):
    def flaky(completion, *, answer, finish_reason, prompt):
        if "boom" in completion:
            raise RuntimeError("parser exploded")
        return math.nan if "nan" in completion else 1.0

    completions = ["ok", "boom", "nan", "ok"]
    with caplog.at_level(logging.WARNING, logger="stepjax.rl.rewards"):
        out = score_batch([flaky, "answer_format"], completions, sample_ids=["a", "b", "c", "d"])
    np.testing.assert_array_equal(out.per_function["flaky"], [1.0, 0.0, 0.0, 1.0])
    np.testing.assert_array_equal(out.rewards, [1.0, 0.0, 0.0, 1.0])  # answer_format scores 0 on all of these
    assert out.num_failures == 2
    assert "'flaky' failed on sample 'b'" in out.failures[0] and "parser exploded" in out.failures[0]
    assert "'flaky' failed on sample 'c'" in out.failures[1] and "nan" in out.failures[1]
    assert sum("failed on sample" in r.message for r in caplog.records) == 2


def test_score_batch_bad_arguments_are_named():
    with pytest.raises(ValueError, match="answers has 1 entries for 2 completions"):
        score_batch(["orz_math"], ["a", "b"], answers=["1"])
    with pytest.raises(KeyError, match="unknown reward 'nope'"):
        score_batch(["nope"], ["a"])
    # A missing ground truth is a per-sample failure (score 0, counted), not a crash.
    assert score_batch(["orz_math"], ["<answer>\\boxed{1}</answer>"]).num_failures == 1

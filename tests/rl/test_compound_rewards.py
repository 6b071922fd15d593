"""Compound-QA rewards (stepjax/rl/compound_rewards.py) and the diversity / coherency proxies they log."""

import json

import pytest

from stepjax.data.compound_qa import encode_ground_truth, render_view
from stepjax.data.compound_scoring import (
    coherency_proxy,
    diversity_proxy,
    hesitation_count,
    return_count,
    strategy_match,
)
from stepjax.rl import REWARDS, score_batch
from stepjax.rl import compound_rewards as cr

SOURCES = ["sort", "add", "parity"]
DIALOGUE = (
    "<think>[scene 1] Sorter: 1<3<9 so 139. [scene 2] Adder: 7+5=12;4+8+1=13 so 132. "
    "[scene 3] Counter: 1,2,2,3 so odd.</think><answer> \\boxed{139} \\boxed{132} \\boxed{odd} </answer>"
)
MONOLOGUE = (
    "<think>1<3<9 so 139. 7+5=12;4+8+1=13 so 132. 1,2,2,3 so odd.</think>"
    "<answer> \\boxed{139} \\boxed{132} \\boxed{odd} </answer>"
)


def truth(fmt="dialogue", answers=("139", "132", "odd"), budget=400):
    return encode_ground_truth(list(answers), SOURCES, fmt, budget)


def test_registered_by_name():
    for name in ("compound_all", "compound_acc", "compound_format", "compound_diversity_proxy",
                 "compound_coherency_proxy"):  # fmt: skip
        assert name in REWARDS.names()
    assert REWARDS.get("compound_all") is cr.compound_all_reward


def test_all_and_acc_on_right_and_partly_wrong_replies():
    assert cr.compound_all_reward(DIALOGUE, answer=truth()) == 1.0
    assert cr.compound_acc_reward(DIALOGUE, answer=truth()) == 1.0
    one_wrong = truth(answers=("139", "133", "odd"))
    assert cr.compound_all_reward(DIALOGUE, answer=one_wrong) == 0.0
    assert cr.compound_acc_reward(DIALOGUE, answer=one_wrong) == pytest.approx(2 / 3)
    assert cr.compound_all_reward(MONOLOGUE, answer=truth("monologue")) == 1.0


def test_gate_truncation_format_and_budget():
    assert cr.compound_acc_reward(DIALOGUE, answer=truth(), finish_reason="length") == 0.0
    # right answers in the wrong format: gated to 0, in both directions
    assert cr.compound_acc_reward(MONOLOGUE, answer=truth("dialogue")) == 0.0
    assert cr.compound_acc_reward(DIALOGUE, answer=truth("monologue")) == 0.0
    assert cr.compound_format_reward(DIALOGUE, answer=truth()) == 1.0
    # the k-scaled budget, in bytes: one byte over it scores 0
    n = len(DIALOGUE.encode())
    assert cr.compound_all_reward(DIALOGUE, answer=truth(budget=n)) == 1.0
    assert cr.compound_all_reward(DIALOGUE, answer=truth(budget=n - 1)) == 0.0
    # no format in the ground truth: only one answer block is required
    bare = json.dumps(["139", "132", "odd"])
    assert cr.compound_all_reward(MONOLOGUE, answer=bare) == 1.0
    assert cr.compound_all_reward(MONOLOGUE + "<answer></answer>", answer=bare) == 0.0


def test_rendered_views_score_full_reward():
    record = {"problems": ["sort 391", "47+85", "parity 1101"], "answers": ["139", "132", "odd"],
              "sources": SOURCES}  # fmt: skip
    for fmt in ("monologue", "dialogue"):
        for positions in ([0], [1, 2], [2, 0, 1]):
            view = render_view(record, positions, fmt, budget=(64, 56))
            assert cr.compound_all_reward(view["response"], answer=view["ground_truth"]) == 1.0


def test_score_batch_by_name_with_logging_weights_and_bad_truth():
    scored = score_batch(
        ["compound_all", "compound_diversity_proxy"],
        [DIALOGUE, MONOLOGUE, DIALOGUE],
        answers=[truth(), truth(), "not json"],
        weights=[1.0, 0.0],
    )
    assert scored.per_function["compound_all"].tolist() == [1.0, 0.0, 0.0]
    assert scored.rewards.tolist() == [1.0, 0.0, 0.0]  # the proxy is logged, not added
    assert scored.num_failures == 1 and "compound_all" in scored.failures[0]
    with pytest.raises(ValueError, match="JSON ground truth"):
        cr.compound_all_reward(DIALOGUE, answer=None)


def test_diversity_proxy():
    assert diversity_proxy(DIALOGUE) == 1.0  # three characters for three scenes
    same_cast = DIALOGUE.replace("Sorter", "Adder").replace("Counter", "Adder")
    assert diversity_proxy(same_cast) == pytest.approx(1 / 3)
    assert diversity_proxy(MONOLOGUE) == 1.0  # three strategies read off the segments
    one_strategy = "<think>1+2=3 so 3. 4+5=9 so 9.</think><answer> \\boxed{3} \\boxed{9} </answer>"
    assert diversity_proxy(one_strategy) == pytest.approx(1 / 2)
    assert diversity_proxy("<answer> \\boxed{3} </answer>") == 0.0
    assert strategy_match(MONOLOGUE, SOURCES) == 1.0
    assert strategy_match(one_strategy, ["add", "sort"]) == 0.5


def test_coherency_proxy():
    assert coherency_proxy(DIALOGUE) == 1.0 and hesitation_count(DIALOGUE) == 0 and return_count(DIALOGUE) == 0
    hesitant = DIALOGUE.replace("Adder: ", "Adder: wait, hmm, ")
    assert hesitation_count(hesitant) == 2 and coherency_proxy(hesitant) == pytest.approx(1 / 3)
    back = DIALOGUE.replace("[scene 3] Counter:", "[scene 1] Sorter: again. [scene 3] Counter:")
    assert return_count(back) == 1 and coherency_proxy(back) == pytest.approx(1 / 2)
    mono_back = "<think>problem 2 first: 9. back to problem 1: 3.</think><answer> x </answer>"
    assert return_count(mono_back) == 0  # "problem 2" alone is no marker; returns need a scene or "back to"
    assert return_count("<think>[scene 2] A: x. back to problem 1: y.</think>") == 1
    assert cr.compound_coherency_proxy(hesitant) == coherency_proxy(hesitant)
    # hesitation words in the answer block do not count (only the think part is read)
    assert hesitation_count("<think>ok</think><answer> \\boxed{wait} </answer>") == 0

"""EP/EC and first-error labels (hand-written cases for every rule), records, judges and consensus."""

import json
import logging

import numpy as np
import pytest

from stepjax.data.consensus import ConsensusJudge, consensus_labels, noisy_judge, prm_accepts
from stepjax.data.long_cot import Step, render_response, sample_chain, sample_numbers, split_response
from stepjax.data.prm_labels import (
    ep_ec_labels,
    first_error_index,
    first_error_labels,
    labels_for,
    prm_record,
    validate_prm_record,
)
from stepjax.data.step_judges import (
    JudgeError,
    JudgeRequest,
    LLMJudge,
    ProgrammaticJudge,
    build_judge_prompt,
    judge_batch,
    parse_judge_reply,
)

OK = Step("x", False, False, False)
WRONG = Step("x", True, False, False)
WRONG_ON_ERROR = Step("x", True, True, False)
BUILDS = Step("x", False, True, False)
FIX = Step("wait, x", False, False, True)


def test_each_rule():
    assert ep_ec_labels([OK, OK, OK], True) == [1, 1, 1]  # rule 5, final correct
    assert ep_ec_labels([OK, OK, OK], False) == [1, 1, 0]  # rule 4: final answer wrong
    assert ep_ec_labels([OK, WRONG, OK], True) == [1, 0, 1]  # rule 1; OK after an error that it does not use
    assert ep_ec_labels([WRONG, BUILDS, BUILDS], False) == [0, 0, 0]  # rule 2: propagation to the end
    # the paper's example: K wrong, K+1 builds on it, K+2 corrects -> 0, 0, 1; then clean steps are 1 again
    assert ep_ec_labels([OK, WRONG, BUILDS, FIX, OK], True) == [1, 0, 0, 1, 1]
    # a correction after TWO wrong steps (the second builds on the first and errs itself)
    assert ep_ec_labels([WRONG, WRONG_ON_ERROR, FIX, OK], True) == [0, 0, 1, 1]
    assert ep_ec_labels([WRONG, WRONG, BUILDS, FIX], True) == [0, 0, 0, 1]
    # a correction clears the error state: a later error opens it again
    assert ep_ec_labels([WRONG, FIX, OK, WRONG, BUILDS], False) == [0, 1, 1, 0, 0]
    # the final step that corrects still has to reach the right answer (rule 4 after rule 3)
    assert ep_ec_labels([WRONG, FIX], True) == [0, 1]
    assert ep_ec_labels([WRONG, FIX], False) == [0, 0]
    # an own error in the final step stays 0 even with a right final answer (rule 1 first)
    assert ep_ec_labels([OK, WRONG], True) == [1, 0]


def test_inconsistent_or_unreadable_judgements_raise():
    with pytest.raises(ValueError, match="step 1 builds on an error but no earlier"):
        ep_ec_labels([OK, BUILDS], False)
    with pytest.raises(ValueError, match="at least one step"):
        ep_ec_labels([], True)

    class Unread:
        own_error = builds_on_error = corrects = False
        parse_ok = False
        text = "blah"

    with pytest.raises(ValueError, match="step 0 could not be parsed"):
        first_error_labels([Unread()], True)


def test_first_error_vs_ep_ec_on_the_same_chains():
    cessation = [OK, WRONG, BUILDS, FIX, OK]  # self-corrected, right answer
    assert first_error_labels(cessation, True) == [1, 1, 1, 1, 1]  # FE calls the wrong step correct
    assert ep_ec_labels(cessation, True) == [1, 0, 0, 1, 1]
    propagation = [OK, WRONG, BUILDS, BUILDS]
    assert first_error_labels(propagation, False) == [1, 0]  # later steps carry no label
    assert first_error_index(propagation, False) == 1
    assert ep_ec_labels(propagation, False) == [1, 0, 0, 0]
    late = [OK, WRONG, FIX, WRONG, BUILDS]  # corrected once, then a second error left standing
    assert first_error_labels(late, False) == [1, 0]  # the good correction is dropped
    assert ep_ec_labels(late, False) == [1, 0, 1, 0, 0]
    assert first_error_labels([OK, OK], False) == [1, 0]  # wrong answer with no step error: the final step
    assert labels_for("first_error", late, False) == [1, 0]
    with pytest.raises(ValueError, match="unknown label scheme 'mc'"):
        labels_for("mc", late, False)


def test_records():
    rec = prm_record("Q: 1+2+3=?\nA: ", ["1+2=3", "3+3=7", "x"], [1, 0], False)
    assert rec == {"prompt": "Q: 1+2+3=?\nA: ", "steps": ["1+2=3", "3+3=7"], "labels": [1, 0], "final_correct": False}
    json.dumps(rec)
    bad = [
        ({"steps": ["a"], "labels": [1], "final_correct": True}, "missing key"),
        ({**rec, "labels": [1]}, "one label per step"),
        ({**rec, "labels": [1, 2]}, "only 0 or 1"),
        ({**rec, "labels": [1, True]}, "only 0 or 1"),
        ({**rec, "steps": []}, "'steps' must be"),
        ({**rec, "final_correct": 1}, "'final_correct' must be a bool"),
    ]
    for record, message in bad:
        with pytest.raises(ValueError, match=message):
            validate_prm_record(record, "record 7")


def _request(chain, **kw):
    steps, answer = split_response(render_response(chain))
    return JudgeRequest(chain.question, tuple(steps), str(sum(chain.numbers)), answer, **kw)


def test_programmatic_judge_matches_ground_truth_labels():
    rng = np.random.default_rng(0)
    judge = ProgrammaticJudge()
    for _ in range(300):
        chain = sample_chain(rng, sample_numbers(rng), error_prob=0.3, cessation_prob=0.5, late_cessation_prob=0.3)
        assert judge(_request(chain)) == ep_ec_labels(chain.steps, chain.correct)
    with pytest.raises(JudgeError, match="cannot be read"):
        judge(JudgeRequest("3+5", ("3+5=8", "so the answer is 8"), "8", "8"))
    with pytest.raises(JudgeError, match="not a sum"):
        judge(JudgeRequest("three plus five", ("3+5=8",), "8", "8"))


def test_llm_judge_prompt_and_parser():
    request = JudgeRequest("3+5+7", ("3+5=9", "9+7=16", "wait, 3+5=8", "8+7=15"), "15", "15", sample_id="q1")
    prompt = build_judge_prompt(request)
    for needle in ("STEP 0: 3+5=9", "STEP 3: 8+7=15", "Reference answer: 15", "propagation", "cessation", "4 steps"):
        assert needle in prompt
    reply = json.dumps([{"STEP 0": 0, "Reason": "9"}, {"STEP 1": 0, "Reason": "b"}, {"STEP 2": 1, "Reason": "c"}])
    reply = reply[:-1] + ', {"STEP 3": 1, "Reason": "d"}]'
    prompts = []
    judge = LLMJudge(lambda p: prompts.append(p) or f"Here you go:\n```json\n{reply}\n```")
    assert judge(request) == [0, 0, 1, 1] and prompts == [prompt]
    assert judge(request) == ProgrammaticJudge()(request)


@pytest.mark.parametrize(
    "reply,message",
    [
        ("no list here", "no JSON list"),
        ('[{"STEP 0": 1, "Reason": "a"},]', "not valid JSON"),
        ('[{"STEP 0": 1, "Reason": "a"}]', "1 items for 2 steps"),
        ('[{"STEP 0": 1, "Reason": "a"}, {"STEP 2": 1, "Reason": "b"}]', "item 1 must be an object with keys 'STEP 1'"),
        ('[{"STEP 0": 1, "Reason": "a"}, {"STEP 1": 1}]', "'Reason'"),
        ('[{"STEP 0": 1, "Reason": "a"}, {"STEP 1": 2, "Reason": "b"}]', "must be 0 or 1, got 2"),
        ('[{"STEP 0": true, "Reason": "a"}, {"STEP 1": 1, "Reason": "b"}]', "must be 0 or 1, got True"),
        ("[1, 2]", "item 0 must be an object"),
    ],
)
def test_parser_rejects_bad_replies(reply, message):
    with pytest.raises(JudgeError, match=message):
        parse_judge_reply(reply, 2)


def test_judge_batch_counts_and_names_skipped_samples(caplog):
    good = '[{"STEP 0": 1, "Reason": "a"}]'
    replies = iter([good, "garbage", good])
    judge = LLMJudge(lambda p: next(replies))
    requests = [JudgeRequest("1+2", ("1+2=3",), "3", "3", sample_id=f"s{i}") for i in range(3)]
    with caplog.at_level(logging.WARNING):
        labelled, skipped = judge_batch(requests, judge)
    assert labelled == [(0, [1]), (2, [1])] and skipped == [1]
    assert "index 1 (id 's1')" in caplog.text and "skipped 1 of 3" in caplog.text


def test_noisy_judge_and_consensus():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=20000)
    assert (noisy_judge(labels, 0.0, rng) == labels).all()
    assert (noisy_judge(labels, 1.0, rng) == 1 - labels).all()
    flips = (noisy_judge(labels, 0.2, rng) != labels).mean()
    assert abs(flips - 0.2) < 4 * np.sqrt(0.2 * 0.8 / labels.size)
    with pytest.raises(ValueError, match="flip_prob"):
        noisy_judge(labels, 1.2, rng)
    with pytest.raises(ValueError, match="only 0 or 1"):
        noisy_judge([0, 2], 0.1, rng)
    assert prm_accepts([0.2, 0.5, 0.51]).tolist() == [0, 0, 1]
    assert consensus_labels([1, 1, 0, 0], [0.9, 0.1, 0.9, 0.1]).tolist() == [1, 0, 0, 0]
    assert consensus_labels([1, 1], [0.6, 0.8], threshold=0.7).tolist() == [0, 1]
    with pytest.raises(ValueError, match="shape"):
        consensus_labels([1, 1], [0.5])
    request = JudgeRequest("1+2+3", ("1+2=3", "3+3=6"), "6", "6")
    both = ConsensusJudge(ProgrammaticJudge(), lambda r: [0.9, 0.3])
    assert both(request) == [1, 0]
    with pytest.raises(JudgeError, match="1 scores for 2 steps"):
        ConsensusJudge(ProgrammaticJudge(), lambda r: [0.9])(request)

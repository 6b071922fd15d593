"""Synthetic long-CoT chains: flags follow the rules, the judge recovers them from text, rates match the config."""

import math
import re

import numpy as np
import pytest

from stepjax.data.long_cot import (
    judge_steps,
    render_response,
    sample_chain,
    sample_numbers,
    split_response,
)

MIX = dict(error_prob=0.3, cessation_prob=0.5, late_cessation_prob=0.3, restart_prob=0.3)


def _chains(count, seed=0, **kw):
    rng = np.random.default_rng(seed)
    return [sample_chain(rng, sample_numbers(rng), **(kw or MIX)) for _ in range(count)]


def _equation(text):
    """Independent reading of a step: (lhs terms, rhs) after any reflection prefix."""
    lhs, rhs = text.split(":")[-1].split(",")[-1].strip().split("=")
    return [int(t) for t in lhs.split("+")], int(rhs)


def test_flags_follow_the_rules():
    for chain in _chains(500):
        true_partial = list(np.cumsum(chain.numbers))
        running, consumed = chain.numbers[0], 1
        for i, step in enumerate(chain.steps):
            terms, rhs = _equation(step.text)
            assert step.own_error == (sum(terms) != rhs), step
            in_error = running != true_partial[consumed - 1]
            if step.corrects:
                assert step.text.startswith("wait, ") and in_error and not step.own_error
                # a correction ends on the true partial sum of the terms consumed so far
                assert rhs == true_partial[consumed - 1]
            else:
                assert terms == [running, chain.numbers[consumed]]
                assert step.builds_on_error == in_error
                consumed += 1
            running = rhs
            if step.own_error and i + 1 < len(chain.steps):  # after an error: correct it, or build on it
                nxt = chain.steps[i + 1]
                assert nxt.corrects or nxt.builds_on_error
        assert consumed == len(chain.numbers) and chain.answer == running
        assert chain.correct == (running == sum(chain.numbers))
        assert chain.kind == ("clean" if not any(s.own_error for s in chain.steps) else chain.kind)


def test_kinds_under_extreme_probabilities():
    assert all(c.kind == "clean" and c.correct for c in _chains(100, error_prob=0.0, cessation_prob=0.5))
    # No reflection: an error is never undone (a wrong value never lands back on the true partial sum).
    for c in _chains(300, error_prob=0.3, cessation_prob=0.0):
        assert c.correct == (not any(s.own_error for s in c.steps))
        assert not any(s.corrects for s in c.steps)
    # Always reflect at once: every own error is followed by its correction, every chain is right.
    for c in _chains(300, error_prob=0.3, cessation_prob=1.0):
        assert c.correct
        for i, s in enumerate(c.steps):
            if s.own_error:
                assert c.steps[i + 1].corrects
            assert not s.builds_on_error


def test_late_cessation_gives_wrong_builds_corrects():
    seen = 0
    for c in _chains(300, error_prob=0.2, cessation_prob=0.0, late_cessation_prob=1.0):
        flags = [(s.own_error, s.builds_on_error, s.corrects) for s in c.steps]
        for i in range(len(flags) - 2):
            if flags[i][0] and not flags[i][1] and not flags[i + 1][0]:
                assert flags[i + 1] == (False, True, False) and flags[i + 2] == (False, False, True)
                seen += 1
    assert seen > 20


def test_restart_steps_are_correct_new_approaches():
    seen = 0
    for c in _chains(300, error_prob=0.3, cessation_prob=1.0, restart_prob=1.0):
        for s in c.steps:
            if s.text.startswith("wait, restart: "):
                terms, rhs = _equation(s.text)
                assert tuple(terms) == c.numbers[: len(terms)] and rhs == sum(terms) and s.corrects
                seen += 1
    assert seen > 20


@pytest.mark.parametrize("separator", ["\n", "\n\n", " ; "])
def test_judge_recovers_generator_flags(separator):
    for chain in _chains(1500, seed=1):
        steps, answer = split_response(render_response(chain, separator=separator), separator=separator)
        assert steps == [s.text for s in chain.steps] and answer == str(chain.answer)
        got = judge_steps(chain.numbers, steps)
        assert all(j.parse_ok for j in got)
        assert [(j.own_error, j.builds_on_error, j.corrects) for j in got] == [
            (s.own_error, s.builds_on_error, s.corrects) for s in chain.steps
        ]
        assert got[-1].value == chain.answer and got[-1].consumed == len(chain.numbers)


def _within(successes, trials, p, sigmas=4.0):
    """Binomial bound: |k/n - p| <= sigmas * sqrt(p(1-p)/n)."""
    return abs(successes / trials - p) <= sigmas * math.sqrt(p * (1 - p) / trials)


@pytest.mark.parametrize("error_prob,cessation_prob", [(0.15, 0.5), (0.3, 0.8)])
def test_rates_match_configuration(error_prob, cessation_prob):
    additions = errors = reflected = 0
    for c in _chains(3000, seed=2, error_prob=error_prob, cessation_prob=cessation_prob):
        for i, s in enumerate(c.steps):
            if not s.corrects:
                additions += 1
                errors += s.own_error
            if s.own_error:  # the cessation decision follows every own error, the last step's included
                reflected += i + 1 < len(c.steps) and c.steps[i + 1].corrects
        assert len([s for s in c.steps if not s.corrects]) == len(c.numbers) - 1
    assert _within(errors, additions, error_prob), (errors, additions)
    assert _within(reflected, errors, cessation_prob), (reflected, errors)


def test_judge_on_free_text():
    numbers = (3, 5, 7, 2)
    steps = ["3+5=8", "hello", "8+6=14", "14+2=16", "wait, 8+7=15", "15+2=17", "17+4=21", "3 + 5 + 7 + 2 = 17"]
    got = judge_steps(numbers, steps)
    assert [j.parse_ok for j in got] == [True, False, True, True, True, True, True, True]
    assert got[0].own_error is False and got[0].value == 8
    assert got[1].value == 8 and got[1].consumed == 2  # unreadable: state unchanged
    assert got[2].own_error and not got[2].builds_on_error  # copy error: 6 is not the next term
    assert got[3].builds_on_error and not got[3].own_error and got[3].consumed == 4  # builds on 14
    # "wait, 8+7=15" neither recomputes the last addition (14+2) nor restarts from a1: an addition past the end
    assert got[4].own_error and got[4].builds_on_error and not got[4].corrects and got[4].value == 16
    assert got[7].own_error  # a multi-term sum without reflection is not a restart
    fixed = judge_steps(numbers, ["3+5=8", "8+6=14", "wait, 8+7=15", "15+2=17", "17+4=21"])
    assert [(j.own_error, j.builds_on_error, j.corrects) for j in fixed] == [
        (False, False, False),
        (True, False, False),
        (False, False, True),  # recomputation of the copy-error step from its written input
        (False, False, False),
        (True, False, False),  # past the last term
    ]
    assert fixed[3].value == 17 and fixed[3].consumed == 4
    wrong = judge_steps(numbers, ["3+5=9", "wait, restart: 3+5=8"])
    assert wrong[0].own_error and wrong[1].corrects  # recomputation of the first step
    bad_fix = judge_steps(numbers, ["3+5=9", "9+7=16", "wait, 9+7=16"])
    assert bad_fix[2].builds_on_error and not bad_fix[2].corrects  # recomputes but keeps the wrong input


def test_split_response_edge_cases():
    assert split_response("3+5=8\n8+7=15</think><answer>\\boxed{15}</answer>") == (["3+5=8", "8+7=15"], "15")
    assert split_response("<think>3+5=8\n\n8+7=1") == (["3+5=8", "8+7=1"], None)
    assert split_response("<think></think><answer>\\boxed{1}</answer>") == ([], "1")
    assert split_response("<think>a\n\nb</think>", separator="\n\n") == (["a", "b"], None)


def test_bad_inputs_are_named():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="min_terms"):
        sample_numbers(rng, min_terms=5, max_terms=3)
    with pytest.raises(ValueError, match="error_prob"):
        sample_chain(rng, (1, 2, 3), error_prob=1.5, cessation_prob=0.5)
    with pytest.raises(ValueError, match="at least 2 terms"):
        sample_chain(rng, (1,), error_prob=0.1, cessation_prob=0.5)
    with pytest.raises(ValueError, match="separator"):
        split_response("x", separator="")
    assert re.fullmatch(r"\d+(\+\d+)+", _chains(1)[0].question)

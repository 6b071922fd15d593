"""The scripted policy's systematic habit (drop a term's tens): where it fires, its rate, and that the free-text
judge recovers its flags like those of a random slip."""

import math

import numpy as np
import pytest

from stepjax.data.long_cot import judge_steps, render_response, sample_chain, sample_numbers, split_response


def _chains(count, seed=0, max_value=40, **kw):
    rng = np.random.default_rng(seed)
    return [sample_chain(rng, sample_numbers(rng, max_value=max_value), **kw) for _ in range(count)]


def _additions(chain):
    """(written running value, term, written result, own_error) of each addition step, read from the text."""
    out = []
    for s in chain.steps:
        if s.corrects:
            continue
        lhs, rhs = s.text.split("=")
        x, y = (int(t) for t in lhs.split("+"))
        out.append((x, y, int(rhs), s.own_error))
    return out


@pytest.mark.parametrize(
    "kw",
    [
        dict(error_prob=0.0, cessation_prob=0.5, habit_prob=0.6),
        dict(error_prob=0.2, cessation_prob=0.5, late_cessation_prob=0.3, restart_prob=0.3, habit_prob=0.5),
    ],
)
def test_judge_recovers_habit_flags(kw):
    chains = _chains(300, seed=1, **kw)
    assert sum(s.own_error for c in chains for s in c.steps) > 100  # the habit chains do contain errors
    for chain in chains:
        texts, answer = split_response(render_response(chain))
        got = judge_steps(chain.numbers, texts)
        assert int(answer) == chain.answer
        assert [(j.parse_ok, j.own_error, j.builds_on_error, j.corrects) for j in got] == [
            (True, s.own_error, s.builds_on_error, s.corrects) for s in chain.steps
        ]


def test_habit_fires_only_on_two_digit_terms_at_the_stated_rate():
    habit_prob = 0.6
    eligible = fired = 0
    for chain in _chains(1500, seed=2, error_prob=0.0, cessation_prob=0.5, habit_prob=habit_prob):
        for x, y, z, own in _additions(chain):
            if y < 10:
                assert not own and z == x + y  # no random slips (error_prob 0) and no habit below 10
                continue
            eligible += 1
            fired += own
            # the one wrong rule: the term's tens are dropped
            assert z == (x + y % 10 if own else x + y)
    assert eligible > 2000
    sigma = math.sqrt(habit_prob * (1 - habit_prob) / eligible)
    assert abs(fired / eligible - habit_prob) <= 4 * sigma, (fired, eligible)


def test_habit_off_by_default_and_validated():
    # the habit draws from the generator only where it can fire: one-digit terms give the habit-free chains
    mix = dict(error_prob=0.3, cessation_prob=0.5, late_cessation_prob=0.3)
    base = _chains(200, seed=3, max_value=9, **mix)
    assert _chains(200, seed=3, max_value=9, habit_prob=0.9, **mix) == base
    assert _chains(200, seed=3, max_value=40, habit_prob=0.5, **mix) != _chains(200, seed=3, max_value=40, **mix)
    with pytest.raises(ValueError, match="habit_prob"):
        sample_chain(np.random.default_rng(0), (1, 2, 3), error_prob=0.1, cessation_prob=0.5, habit_prob=1.5)

"""PRM evaluators on hand-made scores: step precision/recall/F1, best-of-N with each aggregation over disjoint groups,
and PRM-guided step search with a fake proposer and scorer."""

import math

import numpy as np
import pytest

from stepjax.evals.best_of_n import best_of_n_accuracy, oracle_accuracy, solution_score
from stepjax.evals.step_classification import step_classification_metrics
from stepjax.evals.step_search import prm_step_search


def test_step_precision_recall_f1():
    scores = [[0.9, 0.2], [0.6, 0.4, 0.8]]
    labels = [[1, 0], [0, 1, 1]]
    m = step_classification_metrics(scores, labels)
    # predicted correct: 0.9, 0.6, 0.8 -> tp 2 (0.9, 0.8), fp 1 (0.6), fn 1 (0.4)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3) and m["accuracy"] == pytest.approx(3 / 5)
    assert m["steps"] == 5 and m["positives"] == 3
    sub = step_classification_metrics(scores, labels, include=[[False, False], [False, True, True]])
    assert sub["recall"] == pytest.approx(0.5) and sub["precision"] == 1.0 and sub["steps"] == 2
    none = step_classification_metrics([[0.1, 0.2]], [[1, 1]])
    assert none["precision"] == 0.0 and none["f1"] == 0.0
    assert step_classification_metrics([[0.6]], [[1]], threshold=0.7)["recall"] == 0.0
    with pytest.raises(ValueError, match="3 steps but labels hold 2"):
        step_classification_metrics([[0.1, 0.2, 0.3]], [[1, 1]])


def test_solution_scores():
    assert solution_score([0.9, 0.2, 0.7]) == 0.7
    assert solution_score([0.9, 0.2, 0.7], "min") == 0.2
    assert solution_score([0.5, 0.5], "product") == 0.25
    with pytest.raises(ValueError, match="unknown aggregation 'mean'"):
        solution_score([0.5], "mean")


def test_best_of_n_over_disjoint_groups():
    # one problem, four candidates: final-step scores 0.2, 0.9, 0.6, 0.3; correct: no, yes, no, yes
    scores = [[[0.9, 0.2], [0.1, 0.9], [0.8, 0.6], [0.7, 0.3]]]
    correct = [[False, True, False, True]]
    assert best_of_n_accuracy(scores, correct, 1) == 0.5  # the mean correctness
    assert best_of_n_accuracy(scores, correct, 2) == 0.5  # groups {0,1} -> 1 (yes), {2,3} -> 2 (no)
    assert best_of_n_accuracy(scores, correct, 4) == 1.0  # picks candidate 1
    assert best_of_n_accuracy(scores, correct, 4, aggregation="min") == 0.0  # mins 0.2, 0.1, 0.6, 0.3 -> 2
    assert best_of_n_accuracy(scores, correct, 4, aggregation="product") == 0.0  # 0.18, 0.09, 0.48, 0.21 -> 2
    assert oracle_accuracy(correct, 2) == 1.0 and oracle_accuracy([[False, False, True, False]], 2) == 0.5
    with pytest.raises(ValueError, match="best-of-8 needs"):
        best_of_n_accuracy(scores, correct, 8)
    with pytest.raises(ValueError, match="4 scored candidates but 3 graded"):
        best_of_n_accuracy(scores, [[True, True, False]], 2)


def test_best_of_n_with_a_perfect_scorer_reaches_the_oracle():
    rng = np.random.default_rng(0)
    correct = (rng.random((50, 16)) < 0.3).tolist()
    scores = [[[0.5, 1.0 if c else 0.0] for c in row] for row in correct]
    for n in (1, 4, 16):
        assert best_of_n_accuracy(scores, correct, n) == pytest.approx(oracle_accuracy(correct, n))
    assert math.isclose(best_of_n_accuracy(scores, correct, 1), np.mean(correct))


def test_step_search_keeps_the_best_step_and_stops():
    # Candidates per round: a good and a bad step; after 3 steps the generator stops (None) or "fixes".
    def propose(i, prefix, n):
        if len(prefix) >= 3:
            return [None, "fix"] if prefix[-1].startswith("bad") else [None] * n
        return [f"bad{len(prefix)}", f"good{len(prefix)}"][:n]

    def score(items):
        return [[0.9 if s.startswith(("good", "fix")) else 0.1 for s in steps] for _, steps in items]

    got = prm_step_search(["p0", "p1"], propose, score, n=2, max_steps=10)
    assert got == [["good0", "good1", "good2"]] * 2
    # N = 1: only the first candidate (bad); at the end the repair beats stopping on a bad last step
    assert prm_step_search(["p"], propose, score, n=1, max_steps=10) == [["bad0", "bad1", "bad2", "fix"]]
    assert prm_step_search(["p"], propose, score, n=2, max_steps=2) == [["good0", "good1"]]
    with pytest.raises(ValueError, match="n >= 1"):
        prm_step_search(["p"], propose, score, n=0, max_steps=2)

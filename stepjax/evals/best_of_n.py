"""Best-of-N answer selection with a process reward model (PRM@N, llm-rl.md §5.1): each candidate solution gets one
score from its step scores (the final step's score, as the paper does; the minimum or product as options) and the
highest-scoring candidate's answer is graded.

With ``M`` candidates per problem and ``N <= M``, the ``M // N`` disjoint groups of ``N`` candidates are each an
independent best-of-N draw; accuracies average over them (less variance than one group for the same samples).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

SCORE_AGGREGATIONS = ("last", "min", "product")


def solution_score(step_scores: Sequence[float], aggregation: str = "last") -> float:
    """One score per solution: ``last`` (final step), ``min`` or ``product`` of its step scores."""
    if not len(step_scores):
        raise ValueError("a solution needs at least one step score")
    if aggregation == "last":
        return float(step_scores[-1])
    if aggregation == "min":
        return float(min(step_scores))
    if aggregation == "product":
        return float(math.prod(step_scores))
    raise ValueError(f"unknown aggregation {aggregation!r}; expected one of {SCORE_AGGREGATIONS}")


def _groups(num_candidates: int, n: int) -> list[range]:
    if not 1 <= n <= num_candidates:
        raise ValueError(f"best-of-{n} needs 1 <= n <= {num_candidates} candidates per problem")
    return [range(g * n, (g + 1) * n) for g in range(num_candidates // n)]


def best_of_n_accuracy(
    candidate_scores: Sequence[Sequence[Sequence[float]]],
    candidate_correct: Sequence[Sequence[bool]],
    n: int,
    *,
    aggregation: str = "last",
) -> float:
    """Accuracy of picking, among ``n`` candidates, the one with the highest solution score (ties: the first).

    Args:
      candidate_scores: ``[problem][candidate][step]`` PRM step scores.
      candidate_correct: ``[problem][candidate]`` whether that candidate's final answer is right.
    """
    if len(candidate_scores) != len(candidate_correct) or not candidate_scores:
        raise ValueError(f"{len(candidate_scores)} problems of scores but {len(candidate_correct)} of correctness")
    hits = []
    for p, (scores, correct) in enumerate(zip(candidate_scores, candidate_correct, strict=True)):
        if len(scores) != len(correct):
            raise ValueError(f"problem {p}: {len(scores)} scored candidates but {len(correct)} graded")
        totals = [solution_score(s, aggregation) for s in scores]
        for group in _groups(len(scores), n):
            best = max(group, key=lambda i: totals[i])
            hits.append(bool(correct[best]))
    return float(np.mean(hits))


def oracle_accuracy(candidate_correct: Sequence[Sequence[bool]], n: int) -> float:
    """pass@N over the same disjoint groups: the ceiling of any best-of-N selector."""
    hits = [any(correct[i] for i in g) for correct in candidate_correct for g in _groups(len(correct), n)]
    return float(np.mean(hits))

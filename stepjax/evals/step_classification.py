"""Step-level classification scores of a process reward model: precision, recall and F1 with *correct step* as the
positive class (a step is predicted correct when its score exceeds the threshold, 0.5 by default; llm-rl.md §5.1)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _flat(nested: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    if isinstance(nested, np.ndarray):
        return nested.reshape(-1).astype(np.float64)
    return np.asarray([x for row in nested for x in row], np.float64)


def step_classification_metrics(
    scores: Sequence[Sequence[float]] | np.ndarray,
    labels: Sequence[Sequence[int]] | np.ndarray,
    *,
    threshold: float = 0.5,
    include: Sequence[Sequence[bool]] | np.ndarray | None = None,
) -> dict[str, float]:
    """Scores and 0/1 labels per step (nested per solution, or flat arrays); ``include`` selects a subset of steps.

    Returns ``precision``, ``recall``, ``f1``, ``accuracy``, ``steps`` (count) and ``positives`` (steps labelled 1).
    Precision is 0 when nothing is predicted correct; F1 is 0 when precision + recall is 0.
    """
    s, y = _flat(scores), _flat(labels)
    if s.shape != y.shape:
        raise ValueError(f"scores hold {s.size} steps but labels hold {y.size}")
    if include is not None:
        keep = _flat(include).astype(bool)
        if keep.shape != s.shape:
            raise ValueError(f"include holds {keep.size} steps, scores {s.size}")
        s, y = s[keep], y[keep]
    pred = s > threshold
    truth = y > 0.5
    tp = float(np.sum(pred & truth))
    precision = tp / max(float(pred.sum()), 1.0) if pred.any() else 0.0
    recall = tp / max(float(truth.sum()), 1.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    accuracy = float(np.mean(pred == truth)) if s.size else float("nan")
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "accuracy": accuracy,
        "steps": float(s.size),
        "positives": float(truth.sum()),
    }

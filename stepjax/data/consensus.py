"""Consensus step labels: a step is accepted only if both an LLM judge and a PRM accept it (BCPG-NSA, llm-rl.md §4.1:
``I = I^LLM ∧ I^PRM`` with ``I^PRM = 1[PRM score > threshold]``), and simulated noisy judges for CPU experiments.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from stepjax.data.step_judges import Judge, JudgeError, JudgeRequest


def noisy_judge(labels: Sequence[int] | np.ndarray, flip_prob: float, rng: np.random.Generator) -> np.ndarray:
    """``labels`` (0/1) with each entry flipped independently with probability ``flip_prob``; int32, same shape."""
    if not 0.0 <= flip_prob <= 1.0:
        raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
    labels = np.asarray(labels)
    if labels.size and not np.isin(labels, (0, 1)).all():
        raise ValueError(f"labels must hold only 0 or 1, got values {np.unique(labels).tolist()}")
    flips = rng.random(labels.shape) < flip_prob
    return np.where(flips, 1 - labels, labels).astype(np.int32)


def prm_accepts(scores: Sequence[float] | np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """``1[score > threshold]`` per step (int32)."""
    return (np.asarray(scores, dtype=np.float64) > threshold).astype(np.int32)


def consensus_labels(
    llm_labels: Sequence[int] | np.ndarray, prm_scores: Sequence[float] | np.ndarray, *, threshold: float = 0.5
) -> np.ndarray:
    """``llm_label AND 1[prm_score > threshold]`` per step (int32)."""
    llm = np.asarray(llm_labels)
    prm = prm_accepts(prm_scores, threshold)
    if llm.shape != prm.shape:
        raise ValueError(f"llm_labels has shape {llm.shape} but prm_scores has shape {prm.shape}")
    return (llm.astype(bool) & prm.astype(bool)).astype(np.int32)


class ConsensusJudge:
    """A ``Judge`` that ANDs an LLM judge's labels with a PRM's thresholded scores.

    ``prm_score(request) -> [score per step]`` is any step scorer (e.g. ``stepjax.rl.prm_model.score_steps`` bound
    to a trained model and tokenizer).
    """

    def __init__(self, llm_judge: Judge, prm_score: Callable[[JudgeRequest], Sequence[float]], threshold: float = 0.5):
        self.llm_judge = llm_judge
        self.prm_score = prm_score
        self.threshold = threshold

    def __call__(self, request: JudgeRequest) -> list[int]:
        llm = self.llm_judge(request)
        scores = list(self.prm_score(request))
        if len(scores) != len(request.steps):
            raise JudgeError(f"PRM gave {len(scores)} scores for {len(request.steps)} steps")
        return consensus_labels(llm, scores, threshold=self.threshold).tolist()

"""Rule rewards registered by name, and ``score_batch``, which never lets one bad sample crash a rollout.

A reward function scores one completion on the host: ``fn(completion, *, answer, finish_reason, prompt) -> float``.
``score_batch`` runs the configured functions over a batch, sums them with weights, and turns a function that raises
or returns a non-finite value for a sample into reward 0 for that function on that sample, with a logged warning
naming the function and the sample and a count in the result.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from stepjax.data.answers import answers_match, extract_boxed
from stepjax.rl.registry import REWARDS

log = logging.getLogger(__name__)

RewardFn = Callable[..., float]
STOP = "stop"


@REWARDS.register("orz_math")
def orz_math_reward(
    completion: str, *, answer: str | None = None, finish_reason: str = STOP, prompt: str | None = None
) -> float:
    """Open-Reasoner-Zero's rule reward: 1 iff the completion finished by a stop (not truncated) and the last
    ``\\boxed{}`` inside its last complete ``<answer>...</answer>`` equals the ground truth (``answers_match``)."""
    del prompt
    if answer is None:
        raise ValueError("orz_math needs the ground-truth answer")
    if finish_reason != STOP:
        return 0.0
    return float(answers_match(extract_boxed(completion), answer))


_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_THINK_ANSWER = re.compile(r"^\s*<think>.*?</think>\s*<answer>.*?</answer>\s*$", re.DOTALL)


@REWARDS.register("answer_format")
def answer_format_reward(
    completion: str, *, answer: str | None = None, finish_reason: str = STOP, prompt: str | None = None
) -> float:
    """1 iff the completion stopped and holds one complete ``<answer>...</answer>`` with a balanced ``\\boxed{}``
    (what ``orz_math`` can read), else 0."""
    del answer, prompt
    if finish_reason != STOP:
        return 0.0
    return float(len(_ANSWER.findall(completion)) == 1 and extract_boxed(completion) is not None)


@REWARDS.register("think_answer_format")
def think_answer_format_reward(
    completion: str, *, answer: str | None = None, finish_reason: str = STOP, prompt: str | None = None
) -> float:
    """1 iff the completion is exactly ``<think>...</think> <answer>...</answer>`` (R1/ORZ template) and stopped."""
    del answer, prompt
    return float(finish_reason == STOP and _THINK_ANSWER.match(completion) is not None)


@dataclass
class ScoredBatch:
    """Rewards of a batch: ``rewards [N]`` (weighted sum), ``per_function {name: [N]}``, and the failures."""

    rewards: np.ndarray
    per_function: dict[str, np.ndarray]
    failures: list[str] = field(default_factory=list)

    @property
    def num_failures(self) -> int:
        return len(self.failures)


def _resolve(fn: str | RewardFn) -> tuple[str, RewardFn]:
    if isinstance(fn, str):
        return fn, REWARDS.get(fn)
    return getattr(fn, "__name__", repr(fn)), fn


def score_batch(
    reward_fns: Sequence[str | RewardFn],
    completions: Sequence[str],
    *,
    answers: Sequence[str | None] | None = None,
    finish_reasons: Sequence[str] | None = None,
    prompts: Sequence[str | None] | None = None,
    weights: Sequence[float] | None = None,
    sample_ids: Sequence[object] | None = None,
) -> ScoredBatch:
    """Scores ``completions`` with every reward function and sums them with ``weights`` (default 1 each).

    A function that raises or returns NaN/inf for a sample contributes 0 for that sample; each such failure is
    logged as a warning naming the function and the sample (``sample_ids[i]`` or its index) and listed in
    ``ScoredBatch.failures``.
    """
    n = len(completions)
    fns = [_resolve(fn) for fn in reward_fns]
    weights = [1.0] * len(fns) if weights is None else list(weights)
    if len(weights) != len(fns):
        raise ValueError(f"{len(weights)} reward weights for {len(fns)} reward functions")
    for name, values in (("answers", answers), ("finish_reasons", finish_reasons), ("prompts", prompts)):
        if values is not None and len(values) != n:
            raise ValueError(f"{name} has {len(values)} entries for {n} completions")
    answers = [None] * n if answers is None else answers
    finish_reasons = [STOP] * n if finish_reasons is None else finish_reasons
    prompts = [None] * n if prompts is None else prompts
    ids = list(range(n)) if sample_ids is None else list(sample_ids)
    per_function: dict[str, np.ndarray] = {}
    failures: list[str] = []
    for name, fn in fns:
        scores = np.zeros(n, np.float32)
        for i in range(n):
            try:
                value = float(fn(completions[i], answer=answers[i], finish_reason=finish_reasons[i], prompt=prompts[i]))
                if not math.isfinite(value):
                    raise ValueError(f"returned {value}")
            except Exception as err:  # a reward bug must not end the run: score 0, say which sample
                message = f"reward {name!r} failed on sample {ids[i]!r}: {type(err).__name__}: {err}"
                log.warning("%s; scoring it 0", message)
                failures.append(message)
                continue
            scores[i] = value
        per_function[name] = scores
    total = np.zeros(n, np.float32)
    for (name, _), w in zip(fns, weights, strict=True):
        total += np.float32(w) * per_function[name]
    return ScoredBatch(total, per_function, failures)

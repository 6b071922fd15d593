"""Compound-QA rewards (DialogueReason, llm-rl.md §3.1), registered in ``stepjax.rl.REWARDS`` on import.

Each takes the reward signature of ``stepjax.rl.rewards`` (``fn(completion, *, answer, finish_reason, prompt)``);
``answer`` is the JSON ground truth of ``stepjax.data.compound_qa.encode_ground_truth`` (answers, sources,
``format``, ``max_new_tokens``). The gate, shared by the answer rewards:

- the reply stopped (a truncated reply scores 0, as in ORZ);
- it is within the k-scaled budget ``max_new_tokens``, counted in UTF-8 bytes (= tokens of the byte tokenizer; a
  rollout samples every row up to the largest budget of the batch, so this gate enforces the smaller ones);
- ``check_format`` passes for the ground truth's ``format`` (no ``format``: only one ``<answer>`` block is needed).

Rewards: ``compound_all`` = 1[all k correct] (AllAcc), ``compound_acc`` = Acc(k), ``compound_format`` = the gate alone.
``compound_diversity_proxy`` and ``compound_coherency_proxy`` are PROXIES for logging (give them weight 0): see
``stepjax.data.compound_scoring``.
"""

from __future__ import annotations

from stepjax.data.compound_qa import decode_ground_truth
from stepjax.data.compound_scoring import check_format, coherency_proxy, diversity_proxy, score_compound
from stepjax.rl.registry import REWARDS
from stepjax.rl.rewards import STOP


def compound_gate(completion: str, ground_truth: dict, finish_reason: str) -> bool:
    """True when the reply stopped, fits the budget and passes the format check (see the module docstring)."""
    if finish_reason != STOP:
        return False
    budget = ground_truth.get("max_new_tokens")
    if budget is not None and len(completion.encode("utf-8")) > int(budget):
        return False
    fmt = ground_truth.get("format")
    if fmt is None:
        return completion.count("<answer>") == 1 and completion.count("</answer>") == 1
    return check_format(completion, len(ground_truth["answers"]), fmt) is None


def _truth(answer: str | None) -> dict:
    if answer is None:
        raise ValueError("compound rewards need the JSON ground truth (answers, format, budget)")
    return decode_ground_truth(answer)


@REWARDS.register("compound_all")
def compound_all_reward(
    completion: str, *, answer: str | None = None, finish_reason: str = STOP, prompt: str | None = None
) -> float:
    """1 iff the gate passes and every position is right (AllAcc(k)); else 0."""
    del prompt
    truth = _truth(answer)
    if not compound_gate(completion, truth, finish_reason):
        return 0.0
    return float(score_compound(completion, truth["answers"]).all_correct)


@REWARDS.register("compound_acc")
def compound_acc_reward(
    completion: str, *, answer: str | None = None, finish_reason: str = STOP, prompt: str | None = None
) -> float:
    """Acc(k) (the fraction of positions right) if the gate passes; else 0."""
    del prompt
    truth = _truth(answer)
    if not compound_gate(completion, truth, finish_reason):
        return 0.0
    return score_compound(completion, truth["answers"]).accuracy


@REWARDS.register("compound_format")
def compound_format_reward(
    completion: str, *, answer: str | None = None, finish_reason: str = STOP, prompt: str | None = None
) -> float:
    """1 iff the gate passes (stop, budget, format); the answers are not checked."""
    del prompt
    return float(compound_gate(completion, _truth(answer), finish_reason))


@REWARDS.register("compound_diversity_proxy")
def compound_diversity_proxy(
    completion: str, *, answer: str | None = None, finish_reason: str = STOP, prompt: str | None = None
) -> float:
    """PROXY (logging only): distinct characters / strategy tags across the reply's segments."""
    del answer, finish_reason, prompt
    return diversity_proxy(completion)


@REWARDS.register("compound_coherency_proxy")
def compound_coherency_proxy(
    completion: str, *, answer: str | None = None, finish_reason: str = STOP, prompt: str | None = None
) -> float:
    """PROXY (logging only): 1 / (1 + hesitation markers + returns to an earlier sub-problem)."""
    del answer, finish_reason, prompt
    return coherency_proxy(completion)

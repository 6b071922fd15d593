"""Step judges that label solutions with the EP/EC rules: a programmatic judge for the synthetic chains and an LLM
judge around any ``complete(prompt) -> str`` callable.

A judge maps a ``JudgeRequest`` to one 0/1 label per step, or raises ``JudgeError`` when it cannot (an unreadable
step, an unparsable reply). ``judge_batch`` counts and skips such samples with a warning naming them: a sample is
never labelled silently by a fallback.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from stepjax.data.answers import answers_match
from stepjax.data.long_cot import judge_steps
from stepjax.data.prm_labels import ep_ec_labels

logger = logging.getLogger(__name__)


class JudgeError(ValueError):
    """A judge could not label a sample."""


@dataclass(frozen=True)
class JudgeRequest:
    """One solution to judge. ``final_answer`` is the answer the solution writes (None: it wrote none)."""

    question: str
    steps: tuple[str, ...]
    ground_truth: str
    final_answer: str | None
    sample_id: object = None

    @property
    def final_correct(self) -> bool:
        return self.final_answer is not None and answers_match(self.final_answer, self.ground_truth)


@runtime_checkable
class Judge(Protocol):
    def __call__(self, request: JudgeRequest) -> list[int]: ...


class ProgrammaticJudge:
    """Reads each step of an ``a₁+…+a_n`` chain with ``long_cot.judge_steps`` and applies the EP/EC rules."""

    def __call__(self, request: JudgeRequest) -> list[int]:
        try:
            numbers = [int(t) for t in request.question.split("+")]
        except ValueError:
            raise JudgeError(f"question {request.question!r} is not a sum of integers a1+...+an") from None
        if len(numbers) < 2:
            raise JudgeError(f"question {request.question!r} needs at least two terms")
        if not request.steps:
            raise JudgeError("the solution has no step")
        judged = judge_steps(numbers, request.steps)
        bad = [i for i, j in enumerate(judged) if not j.parse_ok]
        if bad:
            raise JudgeError(f"step(s) {bad} cannot be read as equations, e.g. {request.steps[bad[0]]!r}")
        return ep_ec_labels(judged, request.final_correct)


JUDGE_TEMPLATE = """You are grading a step-by-step solution to a math problem. Judge every step in order and give it \
a label of 1 (acceptable) or 0 (not acceptable), following these rules in this order:
1. Own error: if the step itself contains a mistake (wrong calculation, wrong fact, misread quantity, invalid \
reasoning), label it 0.
2. Error propagation: if an earlier step contains an error that has not been corrected yet, and this step builds on \
that error (uses its wrong result) without correcting it or changing approach, label it 0.
3. Error cessation: if this step recognises and corrects an earlier error, or abandons the erroneous path and starts \
a new approach that is correct, label it 1; from here on the earlier error no longer counts as uncorrected.
4. Final step: label the last step 1 only if the final answer of the solution matches the reference answer; \
otherwise label it 0 (rules 1 and 2 still give 0).
5. Otherwise: a step that is correct and does not rest on an uncorrected error gets 1.

Problem:
{question}

Reference answer: {ground_truth}
Final answer written by the solution: {final_answer}

Solution steps:
{steps}

Reply with a JSON list and nothing else, one object per step, in order, with exactly these keys:
[{{"STEP 0": 0 or 1, "Reason": "one short sentence"}}, {{"STEP 1": 0 or 1, "Reason": "..."}}, ...]
There are {num_steps} steps, so the list must have {num_steps} objects (STEP 0 to STEP {last_step})."""


def build_judge_prompt(request: JudgeRequest, template: str = JUDGE_TEMPLATE) -> str:
    """The judging prompt: the EP/EC rules, the problem, the reference and final answers, the numbered steps."""
    steps = "\n".join(f"STEP {i}: {s}" for i, s in enumerate(request.steps))
    final = "(none)" if request.final_answer is None else request.final_answer
    n = len(request.steps)
    return template.format(
        question=request.question,
        ground_truth=request.ground_truth,
        final_answer=final,
        steps=steps,
        num_steps=n,
        last_step=n - 1,
    )


_JSON_LIST = re.compile(r"\[.*\]", re.DOTALL)


def parse_judge_reply(reply: str, num_steps: int) -> list[int]:
    """Labels from a reply ``[{"STEP 0": 0|1, "Reason": "..."}, ...]`` (surrounding text and code fences allowed).

    Raises ``JudgeError`` for: no JSON list, invalid JSON, a wrong number of steps, an item that is not an object, a
    missing ``"STEP i"`` or ``"Reason"`` key, a label other than 0/1.
    """
    match = _JSON_LIST.search(reply)
    if match is None:
        raise JudgeError(f"no JSON list in the judge reply {reply[:80]!r}")
    try:
        items = json.loads(match.group(0))
    except json.JSONDecodeError as e:
        raise JudgeError(f"judge reply is not valid JSON ({e.msg} at char {e.pos})") from None
    if not isinstance(items, list) or len(items) != num_steps:
        got = len(items) if isinstance(items, list) else type(items).__name__
        raise JudgeError(f"judge reply has {got} items for {num_steps} steps")
    labels = []
    for i, item in enumerate(items):
        key = f"STEP {i}"
        if not isinstance(item, dict) or key not in item or "Reason" not in item:
            raise JudgeError(f"judge reply item {i} must be an object with keys {key!r} and 'Reason', got {item!r}")
        value = item[key]
        # bool is an int subclass: reject true/false so only the documented 0/1 are read
        if isinstance(value, bool) or value not in (0, 1):
            raise JudgeError(f"judge reply item {i}: {key!r} must be 0 or 1, got {value!r}")
        labels.append(int(value))
    return labels


class LLMJudge:
    """EP/EC labels from a language-model judge: ``complete(prompt) -> reply`` is any client (an API, a local
    model); the reply is parsed by ``parse_judge_reply``."""

    def __init__(self, complete: Callable[[str], str], *, template: str = JUDGE_TEMPLATE):
        self.complete = complete
        self.template = template

    def __call__(self, request: JudgeRequest) -> list[int]:
        if not request.steps:
            raise JudgeError("the solution has no step")
        reply = self.complete(build_judge_prompt(request, self.template))
        return parse_judge_reply(reply, len(request.steps))


def judge_batch(requests: Sequence[JudgeRequest], judge: Judge) -> tuple[list[tuple[int, list[int]]], list[int]]:
    """Labels every request; skips (and warns about) those the judge cannot label.

    Returns ``(labelled, skipped)``: ``(index, labels)`` pairs and the indices of skipped requests.
    """
    labelled, skipped = [], []
    for i, request in enumerate(requests):
        try:
            labelled.append((i, judge(request)))
        except JudgeError as e:
            name = f"index {i}" if request.sample_id is None else f"index {i} (id {request.sample_id!r})"
            logger.warning("judge skipped sample %s: %s", name, e)
            skipped.append(i)
    if skipped:
        logger.warning("judge skipped %d of %d samples", len(skipped), len(requests))
    return labelled, skipped

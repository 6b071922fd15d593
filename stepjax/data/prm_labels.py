"""Step labels for process reward models: Error Propagation / Error Cessation (EP/EC) and first-error (FE) labels.

EP/EC rules (arXiv 2505.14391, llm-rl.md §5.1), applied to each step in order:
  1. the step has its own error                                  -> 0 (opens the error state)
  2. an uncorrected earlier error exists and the step builds on it -> 0 (error propagation)
  3. the step corrects the error or starts a correct new approach -> 1 (error cessation; clears the error state)
  4. the final step                                              -> 1 iff the final answer matches the ground truth
  5. otherwise                                                   -> 1
Rule 4 is applied to a final step that rules 1-2 left at 1 (a final step with an own error stays 0).
Example: step K wrong, K+1 builds on it, K+2 corrects -> 0, 0, 1.

FE baseline: a correct solution keeps every step labelled 1; an incorrect one keeps only the steps up to and
including its first error (labelled 0; without a step error the final step is the first error); the rest is dropped.

Record format (llm-rl.md §5.3): ``{"prompt": str, "steps": [str], "labels": [0|1], "final_correct": bool}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

LABEL_SCHEMES = ("ep_ec", "first_error")
RECORD_KEYS = ("prompt", "steps", "labels", "final_correct")


class StepFlags(Protocol):
    """Per-step judgement: ``stepjax.data.long_cot.Step`` and ``StepJudgement`` both qualify."""

    own_error: bool
    builds_on_error: bool
    corrects: bool


def _check_parsed(flags: Sequence[StepFlags]) -> None:
    if not flags:
        raise ValueError("a solution needs at least one step to be labelled")
    for i, f in enumerate(flags):
        if getattr(f, "parse_ok", True) is False:
            raise ValueError(f"step {i} could not be parsed ({getattr(f, 'text', '')!r}); it cannot be labelled")


def ep_ec_labels(flags: Sequence[StepFlags], final_correct: bool) -> list[int]:
    """EP/EC labels (module docstring), one per step.

    Raises ValueError when a step is said to build on an error while no uncorrected error is open (an inconsistent
    judgement), or when a step could not be parsed (``parse_ok`` False).
    """
    _check_parsed(flags)
    labels, error_open = [], False
    for i, f in enumerate(flags):
        if f.own_error:
            label, error_open = 0, True
        elif f.builds_on_error:
            if not error_open:
                raise ValueError(f"step {i} builds on an error but no earlier uncorrected error exists")
            label = 0
        elif f.corrects:
            label, error_open = 1, False
        else:
            label = 1
        if i == len(flags) - 1 and label == 1:
            label = int(bool(final_correct))
        labels.append(label)
    return labels


def first_error_index(flags: Sequence[StepFlags], final_correct: bool) -> int | None:
    """Index of the first erroneous step of an incorrect solution (the last step if none has its own error); None
    for a correct solution."""
    _check_parsed(flags)
    if final_correct:
        return None
    return next((i for i, f in enumerate(flags) if f.own_error or f.builds_on_error), len(flags) - 1)


def first_error_labels(flags: Sequence[StepFlags], final_correct: bool) -> list[int]:
    """FE labels: all 1 for a correct solution; else ``[1, ..., 1, 0]`` up to the first error (shorter than
    ``flags``: later steps carry no label)."""
    k = first_error_index(flags, final_correct)
    return [1] * len(flags) if k is None else [1] * k + [0]


def labels_for(scheme: str, flags: Sequence[StepFlags], final_correct: bool) -> list[int]:
    if scheme == "ep_ec":
        return ep_ec_labels(flags, final_correct)
    if scheme == "first_error":
        return first_error_labels(flags, final_correct)
    raise ValueError(f"unknown label scheme {scheme!r}; expected one of {LABEL_SCHEMES}")


def prm_record(prompt: str, steps: Sequence[str], labels: Sequence[int], final_correct: bool) -> dict:
    """A PRM training record; ``steps`` is cut to ``len(labels)`` (FE labels cover a prefix)."""
    record = {
        "prompt": prompt,
        "steps": [str(s) for s in steps[: len(labels)]],
        "labels": [int(x) for x in labels],
        "final_correct": bool(final_correct),
    }
    validate_prm_record(record)
    return record


def validate_prm_record(record: dict, where: str = "record") -> None:
    """Raises ValueError naming the key when ``record`` is not a PRM record (llm-rl.md §5.3)."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a dict with keys {RECORD_KEYS}, got {type(record).__name__}")
    missing = [k for k in RECORD_KEYS if k not in record]
    if missing:
        raise ValueError(f"{where}: missing key(s) {missing}; expected {RECORD_KEYS}")
    if not isinstance(record["prompt"], str):
        raise ValueError(f"{where}: 'prompt' must be a string")
    steps, labels = record["steps"], record["labels"]
    if not isinstance(steps, list) or not steps or not all(isinstance(s, str) for s in steps):
        raise ValueError(f"{where}: 'steps' must be a non-empty list of strings")
    if not isinstance(labels, list) or len(labels) != len(steps):
        raise ValueError(f"{where}: 'labels' must be a list with one label per step ({len(steps)} steps)")
    if any(type(x) is not int or x not in (0, 1) for x in labels):
        raise ValueError(f"{where}: 'labels' must hold only 0 or 1, got {labels}")
    if not isinstance(record["final_correct"], bool):
        raise ValueError(f"{where}: 'final_correct' must be a bool")

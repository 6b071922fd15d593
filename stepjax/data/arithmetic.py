"""Synthetic arithmetic with short digit-wise traces in the Open-Reasoner-Zero answer format.

Response: ``<think>STEP;STEP;...</think><answer>\\boxed{N}</answer>``. Every step is an equation that Python
integer arithmetic can check on its own:

- addition, column by column from the units, the carry written as ``+1``:
  47+85 -> ``7+5=12;4+8+1=13`` -> 132 (the last sum in full, then the units digits of the earlier sums);
- subtraction, column by column, a borrow written as ``1x`` in its column and ``-1`` in the next:
  52-38 -> ``12-8=4;5-1-3=1`` -> 14; if a < b the first step swaps: ``38-52=-(52-38)``;
- multiplication, one partial product per digit of b, then their sum: 47*85 -> ``47*5=235;47*80=3760;
  235+3760=3995`` (no sum step when b has one digit).

A trace with an error (``wrong_step``) has one step whose result is perturbed; later steps are computed from the
wrong value (error propagation), so they are locally correct and the final answer is wrong.

A trace with ``drop_carries`` shows a *systematic* habit instead of a random slip: in addition it never writes the
carry (``4+8=12`` where ``4+8+1=13`` is due), so every problem with a carry comes out wrong the same way. A model
warm-started on such traces learns the habit; RL with an answer reward has to unlearn it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import numpy as np

OPS = ("+", "-", "*")


def orz_prompt(question: str, bos: str = "") -> str:
    """The Open-Reasoner-Zero training prompt, exactly as the reference code renders it.

    Reproduces ``playground/zero_setting_base.py`` (two Jinja stages; Jinja drops the instruction's trailing
    newline). Note the code's template text writes ``\\\\boxed{}`` which Jinja copies verbatim, so the rendered
    prompt contains two backslashes before ``boxed``; the paper's wording differs slightly (see llm-rl.md §1.3).
    """
    instruction = (
        "You must put your answer inside <answer> </answer> tags, i.e., <answer> answer here </answer>. "
        "And your final answer will be extracted automatically by the \\\\boxed{} tag.\n"
        f"This is the problem:\n{question}"
    )
    return (
        f"{bos}A conversation between User and Assistant. The User asks a question, and the Assistant solves it. "
        "The Assistant first thinks about the reasoning process in the mind and then provides the User with the "
        "answer. The reasoning process is enclosed within <think> </think> and answer is enclosed within <answer> "
        "</answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here "
        f"</answer>. User: {instruction}\nAssistant: <think>"
    )


def to_orz_format(record: dict, bos: str = "") -> dict:
    """The same record with the ORZ prompt (``orz_prompt``, which ends in ``Assistant: <think>``) and the response
    continuing after that ``<think>``: prompt + response is then one well-formed ORZ transcript."""
    response = record["response"]
    if response.startswith("<think>"):
        response = response[len("<think>") :]
    return {**record, "prompt": orz_prompt(record["question"], bos=bos), "response": response}


def arithmetic_prompt(question: str) -> str:
    """The compact prompt used for the byte-level demo: ``"Q: 47+85=?\\nA: "``."""
    return f"Q: {question}=?\nA: "


def format_response(steps: Sequence[str], answer: str) -> str:
    return f"<think>{';'.join(steps)}</think><answer>\\boxed{{{answer}}}</answer>"


def _digits(n: int) -> list[int]:
    """Decimal digits of n >= 0, units first."""
    return [int(c) for c in reversed(str(n))]


class _Trace:
    """Collects steps; ``result(value, candidates)`` returns the value a step writes (perturbed at wrong_step)."""

    def __init__(self, wrong_step: int | None, rng: np.random.Generator | None, drop_carries: bool = False):
        self.steps: list[str] = []
        self.correct: list[bool] = []
        self.wrong_step, self.rng = wrong_step, rng
        self.drop_carries = drop_carries
        self.perturbable: list[int] = []

    def result(self, value: int, candidates: Callable[[np.random.Generator], Sequence[int]]) -> int:
        """``candidates(rng)`` lists plausible wrong values; it is only called (and rng only used) at wrong_step."""
        index = len(self.steps)
        self.perturbable.append(index)
        if index != self.wrong_step:
            return value
        options = [c for c in candidates(self.rng) if c != value]
        return int(options[int(self.rng.integers(len(options)))])

    def add(self, text: str, ok: bool = True) -> None:
        self.steps.append(text)
        self.correct.append(ok)


def _add_columns(trace: _Trace, a: int, b: int) -> int:
    da, db = _digits(a), _digits(b)
    carry, low_digits, total = 0, [], 0
    for i in range(max(len(da), len(db))):
        x, y = (da[i] if i < len(da) else 0), (db[i] if i < len(db) else 0)
        true = x + y + carry
        if trace.drop_carries and carry:  # the habit: the carry is forgotten, the rest of the step is right
            trace.add(f"{x}+{y}={x + y}", False)
            carry, total = (x + y) // 10, x + y
            low_digits.append(total % 10)
            continue
        s = trace.result(true, lambda _: [true + k for k in (-10, -2, -1, 1, 2, 10) if 0 <= true + k <= 19])
        trace.add(f"{x}+{y}{f'+{carry}' if carry else ''}={s}", s == true)
        carry, total = s // 10, s
        low_digits.append(s % 10)
    # The answer is written from the trace: the last column sum in full, then the earlier units digits.
    return int(str(total) + "".join(str(d) for d in reversed(low_digits[:-1])))


def _subtract_columns(trace: _Trace, top: int, bottom: int) -> int:
    dt, db = _digits(top), _digits(bottom)
    borrow, digits = 0, []
    for i in range(len(dt)):
        x, y = dt[i], (db[i] if i < len(db) else 0)
        need = x - borrow < y
        lhs = x + 10 * need
        true = lhs - borrow - y
        r = trace.result(true, lambda _: [true + k for k in (-2, -1, 1, 2) if 0 <= true + k <= 9])
        trace.add(f"{lhs}{f'-{borrow}' if borrow else ''}-{y}={r}", r == true)
        borrow = int(need)
        digits.append(r)
    return int("".join(str(d) for d in reversed(digits)))


def _multiply_partials(trace: _Trace, a: int, b: int) -> int:
    partials = []
    for i, d in enumerate(_digits(b)):
        factor = d * 10**i
        true = a * factor
        # An error keeps the partial's trailing zeros: off by 1-2 in the digit place of this partial.
        p = trace.result(true, lambda _: [true + k * 10**i for k in (-2, -1, 1, 2) if true + k * 10**i >= 0])
        trace.add(f"{a}*{factor}={p}", p == true)
        partials.append(p)
    if len(partials) == 1:
        return partials[0]
    true = sum(partials)

    def sum_errors(rng: np.random.Generator) -> list[int]:
        scale = 10 ** int(rng.integers(len(str(true))))  # off by 1-2 in a random digit place
        return [true + k * scale for k in (-2, -1, 1, 2) if true + k * scale >= 0]

    total = trace.result(true, sum_errors)
    trace.add(f"{'+'.join(str(p) for p in partials)}={total}", total == true)
    return total


def _run_trace(
    a: int, op: str, b: int, wrong_step: int | None, rng: np.random.Generator | None, drop_carries: bool = False
) -> tuple[_Trace, int]:
    trace = _Trace(wrong_step, rng, drop_carries)
    if op == "+":
        value = _add_columns(trace, a, b)
    elif op == "-":
        if a < b:
            trace.add(f"{a}-{b}=-({b}-{a})")
            value = -_subtract_columns(trace, b, a)
        else:
            value = _subtract_columns(trace, a, b)
    elif op == "*":
        value = _multiply_partials(trace, a, b)
    else:
        raise ValueError(f"unknown op {op!r}; expected one of {OPS}")
    return trace, value


def arithmetic_record(
    a: int,
    op: str,
    b: int,
    *,
    wrong_step: int | None = None,
    rng: np.random.Generator | None = None,
    drop_carries: bool = False,
) -> dict:
    """One problem ``a op b`` (a, b >= 0) with its trace.

    Args:
      wrong_step: index into the steps of the step whose result is perturbed (None: a correct trace; -1: a random
        perturbable step). Needs ``rng``.
      drop_carries: write every addition column without its carry (the systematic error; no effect without one).
    Returns a dict: ``question`` ("47+85"), ``prompt``, ``response``, ``steps`` (list[str]), ``step_correct``
    (list[bool]), ``answer`` (the trace's final answer), ``ground_truth``, ``has_error``.
    """
    if a < 0 or b < 0:
        raise ValueError(f"operands must be >= 0, got {a} and {b}")
    if wrong_step is not None and rng is None:
        raise ValueError("wrong_step needs an rng")
    if wrong_step is not None and wrong_step < 0:
        probe, _ = _run_trace(a, op, b, None, None, drop_carries)
        wrong_step = int(probe.perturbable[int(rng.integers(len(probe.perturbable)))])
    trace, value = _run_trace(a, op, b, wrong_step, rng, drop_carries)
    if wrong_step is not None and wrong_step not in trace.perturbable:
        raise ValueError(f"step {wrong_step} of {a}{op}{b} cannot be perturbed (perturbable: {trace.perturbable})")
    truth = {"+": a + b, "-": a - b, "*": a * b}[op]
    question = f"{a}{op}{b}"
    if wrong_step is not None and not drop_carries and value == truth:  # cannot happen; guard anyway
        raise AssertionError(f"perturbing step {wrong_step} of {question} left the answer correct")
    return {
        "question": question,
        "prompt": arithmetic_prompt(question),
        "response": format_response(trace.steps, str(value)),
        "steps": trace.steps,
        "step_correct": trace.correct,
        "answer": str(value),
        "ground_truth": str(truth),
        "has_error": value != truth,
    }


def problem_key(a: int, op: str, b: int) -> str:
    """Identity of a problem for splitting; ``+`` and ``*`` are commutative, so 47+85 and 85+47 are one problem."""
    if op in "+*":
        a, b = min(a, b), max(a, b)
    return f"{a}{op}{b}"


def problem_split(a: int, op: str, b: int, test_fraction: float = 0.1) -> str:
    """'test' or 'train', fixed by a hash of the problem (stable across runs and machines)."""
    h = int.from_bytes(hashlib.sha256(problem_key(a, op, b).encode()).digest()[:8], "big") / 2.0**64
    return "test" if h < test_fraction else "train"


def _digit_range(digits: int | tuple[int, int]) -> tuple[int, int]:
    lo, hi = (digits, digits) if isinstance(digits, int) else digits
    if not 1 <= lo <= hi:
        raise ValueError(f"digits={digits!r}: expected n >= 1 or (min, max) with 1 <= min <= max")
    return lo, hi


def _sample_operand(rng: np.random.Generator, lo: int, hi: int) -> int:
    d = int(rng.integers(lo, hi + 1))
    return int(rng.integers(0 if d == 1 else 10 ** (d - 1), 10**d))


def make_arithmetic_split(
    name: str,
    n: int,
    seed: int,
    *,
    ops: Sequence[str] = ("+",),
    digits: int | tuple[int, int] = (1, 2),
    wrong_step_fraction: float = 0.0,
    carry_drop_fraction: float = 0.0,
    test_fraction: float = 0.1,
    unique: bool = False,
) -> list[dict]:
    """``n`` records of split ``name`` ('train' | 'test'); deterministic in (name, n, seed, options).

    Problems are drawn uniformly (operand digit count uniform in ``digits``, then the value), and kept only if
    ``problem_split`` puts them in ``name``, so train and test never share a problem. Each record independently
    gets one wrong step with probability ``wrong_step_fraction`` and, independently, the dropped-carry habit with
    probability ``carry_drop_fraction`` (see the module docstring). ``unique=True`` draws without repeats (raises if
    the split has fewer than ``n`` problems).
    """
    if name not in ("train", "test"):
        raise ValueError(f"split name {name!r}: expected 'train' or 'test'")
    bad_ops = [op for op in ops if op not in OPS]
    if bad_ops or not ops:
        raise ValueError(f"ops={ops!r}: expected a non-empty subset of {OPS}")
    if not 0.0 <= wrong_step_fraction <= 1.0 or not 0.0 <= carry_drop_fraction <= 1.0 or not 0.0 < test_fraction < 1.0:
        raise ValueError(
            f"wrong_step_fraction={wrong_step_fraction} and carry_drop_fraction={carry_drop_fraction} must be in "
            f"[0, 1], test_fraction={test_fraction} in (0, 1)"
        )
    lo, hi = _digit_range(digits)
    rng = np.random.default_rng([seed, 0 if name == "train" else 1])
    records, seen = [], set()
    stale = 0  # draws since the last accepted problem: many in a row means the split (or its unused part) is empty
    while len(records) < n:
        stale += 1
        if stale > 20_000:
            raise ValueError(
                f"could not draw {n} {'distinct ' if unique else ''}{name} problems with ops={ops}, "
                f"digits={digits}, test_fraction={test_fraction} (got {len(records)})"
            )
        a, b = _sample_operand(rng, lo, hi), _sample_operand(rng, lo, hi)
        op = ops[int(rng.integers(len(ops)))]
        if problem_split(a, op, b, test_fraction) != name:
            continue
        if unique:
            if (a, op, b) in seen:
                continue
            seen.add((a, op, b))
        stale = 0
        wrong = -1 if rng.random() < wrong_step_fraction else None
        # Drawn only when asked for, so existing (seed, options) splits stay the same.
        drop = bool(carry_drop_fraction) and rng.random() < carry_drop_fraction
        records.append(arithmetic_record(a, op, b, wrong_step=wrong, rng=rng, drop_carries=drop))
    return records

"""Synthetic long chains of thought with reflection: a₁+…+a_n, one running partial sum per step.

Response: ``<think>STEP<sep>STEP<sep>...</think><answer>\\boxed{N}</answer>`` (separator ``"\\n"`` by default).
Each step is an equation that can be checked on its own:

- an addition step ``R+a=V``: the written running value ``R`` plus the next term ``a`` (the first step is
  ``a₁+a₂=V``);
- a reflection that recomputes the last addition from the correct value: ``wait, S+a=V`` (``S`` = the true partial
  sum before that addition), or a correct new approach from scratch: ``wait, restart: a₁+…+a_k=V``.

The scripted behaviour policy (π_ref of llm-rl.md §4.3/§5.3) errs at each addition with probability ``error_prob``
(the sum is off by ±1 or ±10, never landing on the true partial sum). Right after an own error it writes a reflection
with probability ``cessation_prob`` (**error cessation**) and otherwise continues from the wrong value (**error
propagation**: later additions are locally correct but build on the error); after a propagated step it may still
reflect late with probability ``late_cessation_prob`` (the paper's "K wrong, K+1 builds on it, K+2 corrects").
A fraction ``restart_prob`` of reflections are written as a restart. Reflections are always correct.

Optionally the policy also has a **systematic habit** (``habit_prob``, off by default): at an addition whose term is
``>= 10`` it drops the term's tens with probability ``habit_prob`` (writes ``R+a=R+(a mod 10)``), the same wrong rule
every time it fires; such a step is an own error exactly like a random slip (same cessation/propagation rules). The
habit is skipped where it would land on the true partial sum; where it does not fire, the random slip may.

``judge_steps`` re-derives the per-step flags from the text alone (also for free text written by a tiny LM: a step it
cannot read gets ``parse_ok=False``); on rendered chains it recovers the generator's flags exactly.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from stepjax.data.answers import extract_boxed

REFLECTION_PREFIX = "wait, "
RESTART_PREFIX = "wait, restart: "


@dataclass(frozen=True)
class Step:
    """One generated step and its ground-truth flags."""

    text: str  # e.g. "8+7=15" or "wait, 8+7=15"
    own_error: bool  # this step's arithmetic is wrong
    builds_on_error: bool  # it starts from a wrong running value left by an uncorrected earlier error
    corrects: bool  # a reflection step that fixes the earlier error (or restarts correctly)


@dataclass(frozen=True)
class Chain:
    """A problem (the terms), the generated steps and the answer the chain writes."""

    numbers: tuple[int, ...]
    steps: tuple[Step, ...]
    answer: int

    @property
    def question(self) -> str:
        return "+".join(str(a) for a in self.numbers)

    @property
    def correct(self) -> bool:
        return self.answer == sum(self.numbers)

    @property
    def kind(self) -> str:
        """``clean`` (no error), ``cessation`` (every error corrected), ``propagation`` (an error left standing)."""
        if not any(s.own_error for s in self.steps):
            return "clean"
        return "cessation" if self.correct else "propagation"


@dataclass(frozen=True)
class StepJudgement:
    """What the programmatic judge reads from one step text.

    ``value``/``consumed``: the running value and the number of terms it covers after this step (unchanged when the
    step cannot be parsed).
    """

    text: str
    parse_ok: bool
    own_error: bool
    builds_on_error: bool
    corrects: bool
    value: int
    consumed: int


def long_cot_prompt(question: str) -> str:
    """The compact byte-level prompt: ``"Q: 3+5+7=?\\nA: "`` (the response starts with ``<think>``)."""
    return f"Q: {question}=?\nA: "


def sample_numbers(
    rng: np.random.Generator, *, min_terms: int = 3, max_terms: int = 6, max_value: int = 99
) -> tuple[int, ...]:
    """``n ~ U{min_terms..max_terms}`` terms, each ``~ U{1..max_value}``."""
    if not 2 <= min_terms <= max_terms:
        raise ValueError(f"need 2 <= min_terms <= max_terms, got min_terms={min_terms}, max_terms={max_terms}")
    if max_value < 1:
        raise ValueError(f"max_value must be >= 1, got {max_value}")
    n = int(rng.integers(min_terms, max_terms + 1))
    return tuple(int(x) for x in rng.integers(1, max_value + 1, size=n))


# ------------------------------------------------------------------------------------------------ generator


@dataclass(frozen=True)
class GeneratorState:
    """Where a (possibly partial) chain stands: written running value, terms it covers, what the last step was."""

    running: int
    consumed: int
    last_own_error: bool = False  # the last step was an own error (cessation decision due)
    last_propagated: bool = False  # the last step built on an uncorrected error (late-cessation decision due)

    def in_error(self, numbers: Sequence[int]) -> bool:
        return self.running != sum(numbers[: self.consumed])


def initial_state(numbers: Sequence[int]) -> GeneratorState:
    return GeneratorState(running=int(numbers[0]), consumed=1)


def state_after(numbers: Sequence[int], judgements: Sequence[StepJudgement]) -> GeneratorState:
    """The generator state after the judged prefix (for step-level search from a partial chain)."""
    if not judgements:
        return initial_state(numbers)
    last = judgements[-1]
    return GeneratorState(
        running=last.value,
        consumed=last.consumed,
        last_own_error=last.own_error,
        last_propagated=last.builds_on_error and not last.own_error,
    )


def _wrong_value(rng: np.random.Generator, value: int, true_value: int) -> int:
    """``value`` off by ±1 or ±10, non-negative and different from the true partial sum."""
    options = [value + d for d in (1, -1, 10, -10) if value + d >= 0 and value + d != true_value]
    return int(options[int(rng.integers(len(options)))])


def next_step(
    rng: np.random.Generator,
    numbers: Sequence[int],
    state: GeneratorState,
    *,
    error_prob: float,
    cessation_prob: float,
    late_cessation_prob: float = 0.0,
    restart_prob: float = 0.0,
    habit_prob: float = 0.0,
) -> tuple[Step, GeneratorState] | None:
    """One step of the scripted policy from ``state``, or None when the chain is finished."""
    true_now = sum(numbers[: state.consumed])
    if state.running != true_now:
        reflect_prob = cessation_prob if state.last_own_error else late_cessation_prob if state.last_propagated else 0
        if reflect_prob and rng.random() < reflect_prob:
            if state.consumed > 2 and rng.random() < restart_prob:
                text = RESTART_PREFIX + "+".join(str(a) for a in numbers[: state.consumed]) + f"={true_now}"
            else:
                before = sum(numbers[: state.consumed - 1])
                text = f"{REFLECTION_PREFIX}{before}+{numbers[state.consumed - 1]}={true_now}"
            step = Step(text, own_error=False, builds_on_error=False, corrects=True)
            return step, GeneratorState(running=true_now, consumed=state.consumed)
    if state.consumed >= len(numbers):
        return None
    term = int(numbers[state.consumed])
    value = state.running + term
    true_next = true_now + term
    # The habit draws from rng only when it can fire, so habit_prob = 0 leaves every existing chain unchanged.
    habit_value = state.running + term % 10
    if habit_prob and term >= 10 and habit_value != true_next and rng.random() < habit_prob:
        own_error, value = True, habit_value
    else:
        own_error = bool(rng.random() < error_prob)
        if own_error:
            value = _wrong_value(rng, value, true_next)
    builds = state.running != true_now
    step = Step(f"{state.running}+{term}={value}", own_error=own_error, builds_on_error=builds, corrects=False)
    new_state = GeneratorState(
        running=value, consumed=state.consumed + 1, last_own_error=own_error, last_propagated=builds and not own_error
    )
    return step, new_state


def sample_chain(
    rng: np.random.Generator,
    numbers: Sequence[int],
    *,
    error_prob: float,
    cessation_prob: float,
    late_cessation_prob: float = 0.0,
    restart_prob: float = 0.0,
    habit_prob: float = 0.0,
) -> Chain:
    """One chain of the scripted policy for ``numbers`` (see the module docstring for the rules)."""
    for name, p in (
        ("error_prob", error_prob),
        ("cessation_prob", cessation_prob),
        ("late_cessation_prob", late_cessation_prob),
        ("restart_prob", restart_prob),
        ("habit_prob", habit_prob),
    ):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {p}")
    if len(numbers) < 2:
        raise ValueError(f"numbers needs at least 2 terms, got {tuple(numbers)}")
    numbers = tuple(int(a) for a in numbers)
    state, steps = initial_state(numbers), []
    while (
        out := next_step(
            rng,
            numbers,
            state,
            error_prob=error_prob,
            cessation_prob=cessation_prob,
            late_cessation_prob=late_cessation_prob,
            restart_prob=restart_prob,
            habit_prob=habit_prob,
        )
    ) is not None:
        step, state = out
        steps.append(step)
    return Chain(numbers=numbers, steps=tuple(steps), answer=state.running)


# ------------------------------------------------------------------------------------------------ text


def render_response(chain: Chain, *, separator: str = "\n") -> str:
    """``<think>STEP<sep>STEP...</think><answer>\\boxed{N}</answer>``."""
    if not separator:
        raise ValueError("separator must be a non-empty string")
    body = separator.join(s.text for s in chain.steps)
    return f"<think>{body}</think><answer>\\boxed{{{chain.answer}}}</answer>"


def split_response(text: str, *, separator: str = "\n") -> tuple[list[str], str | None]:
    """Steps inside ``<think>...</think>`` (stripped, empty pieces dropped) and the boxed answer string (or None).

    The opening ``<think>`` may be missing (the prompt can end with it); without ``</think>`` everything after
    ``<think>`` counts as thought and there is no answer.
    """
    if not separator:
        raise ValueError("separator must be a non-empty string")
    start = text.find("<think>")
    body = text[start + len("<think>") :] if start >= 0 else text
    end = body.find("</think>")
    answer = None
    if end >= 0:
        answer = extract_boxed(body[end:])
        body = body[:end]
    steps = [s.strip() for s in body.split(separator)]
    return [s for s in steps if s], answer


_STEP = re.compile(
    r"^\s*(?P<reflect>(?:wait|hmm|alternatively|let me check)\s*,?\s*)?(?P<restart>restart\s*:\s*)?"
    r"(?P<lhs>\d+(?:\s*\+\s*\d+)+)\s*=\s*(?P<rhs>\d+)\s*\.?\s*$",
    re.IGNORECASE,
)


def judge_steps(numbers: Sequence[int], step_texts: Sequence[str]) -> list[StepJudgement]:
    """Programmatic step judge: reads each step and says own_error / builds_on_error / corrects / parse_ok.

    Rules, with ``R`` the written running value, ``k`` the number of terms it covers and ``S_k`` the true partial sum
    (an "error state" is ``R != S_k``):
      - addition ``x+y=z``: own error if ``z != x+y``, or ``y`` is not the next term, or ``x`` is neither ``R`` nor
        ``S_k`` (a copy error); builds on an error if ``x != S_k``; then ``R = z``, ``k += 1``.
      - reflection ``wait, x+y=z`` with ``y`` the last added term: a recomputation of the last addition (``k``
        unchanged); ``x`` must be the input of that addition as written or its true value.
      - reflection with the left side equal to ``a₁+…+a_j``: a new approach from scratch (``k = j``).
      - a step corrects if it starts in an error state, is not itself wrong and ends outside one.
    A step that does not parse, or adds past the last term, leaves the state unchanged (the latter is an own error).
    """
    numbers = [int(a) for a in numbers]
    prefix = np.concatenate([[0], np.cumsum(numbers)]).tolist()
    running, consumed = numbers[0], 1
    last_input: int | None = None  # the x of the last addition, as written
    out = []
    for text in step_texts:
        m = _STEP.match(text)
        if m is None:
            out.append(StepJudgement(text, False, False, False, False, running, consumed))
            continue
        terms = [int(t) for t in m["lhs"].split("+")]
        rhs = int(m["rhs"])
        error_before = running != prefix[consumed]
        reflect = m["reflect"] is not None or m["restart"] is not None
        is_recompute = (
            reflect
            and len(terms) == 2
            and consumed >= 2
            and terms[1] == numbers[consumed - 1]
            and terms[0] in (last_input, prefix[consumed - 1])
        )
        is_restart = reflect and not is_recompute and terms == numbers[: len(terms)]
        if is_recompute:
            own = rhs != sum(terms)
            builds = terms[0] != prefix[consumed - 1]
            new_consumed = consumed
        elif is_restart:
            own, builds, new_consumed = rhs != sum(terms), False, len(terms)
        elif len(terms) == 2 and consumed < len(numbers):
            x, y = terms
            own = rhs != x + y or y != numbers[consumed] or x not in (running, prefix[consumed])
            builds = x != prefix[consumed]
            new_consumed = consumed + 1
            last_input = x
        else:  # past the last term, or a sum of several terms that is not a restart from scratch
            out.append(StepJudgement(text, True, True, error_before, False, running, consumed))
            continue
        running, consumed = rhs, new_consumed
        corrects = error_before and not own and running == prefix[consumed]
        out.append(StepJudgement(text, True, own, builds, corrects, running, consumed))
    return out

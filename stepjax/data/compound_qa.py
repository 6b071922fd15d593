"""Compound-QA(k): k sub-problems of different kinds in one prompt, answered in order (DialogueReason, llm-rl.md §3).

A stored record is a pool of sub-problems, ``{"problems": [q_1..q_m], "answers": [a_1..a_m], "sources": [...]}``
(``sources`` names each sub-problem's kind). It is *rendered at load time*: ``render_view`` draws k (from
``k_weights``) and which pool entries to use, in which order, from a seeded generator, so a source or iterator that
seeds it with the epoch resamples k and the order every epoch (``CompoundQASource``, ``CompoundPromptIterator``).

Sub-problem kinds (the spec's CPU reproduction; each has a short checkable trace):

- ``add``: ``47+85``, the column trace of ``stepjax.data.arithmetic`` (``7+5=12;4+8+1=13``) -> ``132``;
- ``sort``: ``sort 391``, the digits in order (``1<3<9``, ``=`` for ties) -> ``139``;
- ``parity``: ``parity 1101``, the running count of ones (``1,2,2,3``) -> ``odd``.

Prompt: ``Solve the following k problems. Problem 1: ... Problem k: ...`` then ``\\nA: ``. Response, in one of two
formats (same prompt, same segments ``q_j: TRACE_j so a_j.``, which restate the sub-problem; only the framing differs):

- ``monologue``: ``<think>q_1: TRACE_1 so a_1. q_2: TRACE_2 so a_2.</think>``
  ``<answer> \\boxed{a_1} \\boxed{a_2} </answer>``;
- ``dialogue``: each sub-problem is a new scene with its own character, ``[scene j] Role: q_j: TRACE_j so a_j.``
  (roles ``Adder``, ``Sorter``, ``Counter``): the role tag and the scene-reset marker of the DialogueReason format,
  kept to a few bytes for a byte LM.

``ground_truth`` is a JSON string ``{"answers": [...], "sources": [...], "format": ..., "max_new_tokens": ...}`` so
that host-side rewards (which see only the completion and the ground truth) can score positions, gate on the format
and apply the length budget, which grows with k (``length_budget``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from collections.abc import Sequence

import numpy as np

from stepjax.data.arithmetic import arithmetic_record, problem_key

SOURCES = ("add", "sort", "parity")
FORMATS = ("monologue", "dialogue")
ROLES = {"add": "Adder", "sort": "Sorter", "parity": "Counter"}
HESITATIONS = ("wait", "hmm", "alternatively")


@dataclasses.dataclass(frozen=True)
class TraceNoise:
    """Noise of warm-start traces (each draw independent).

    Attributes:
      slip: per sub-problem, one step's result is perturbed and later steps follow it (wrong answer).
      carry_drop: per ``add`` sub-problem, the systematic dropped-carry habit of ``stepjax.data.arithmetic``.
      hesitation: per segment, a hesitation marker (``wait, `` / ``hmm, `` / ``alternatively, ``) opens it.
      box_error: per response, one box of the answer block is dropped or written twice (the scorer rejects it).
    """

    slip: float = 0.0
    carry_drop: float = 0.0
    hesitation: float = 0.0
    box_error: float = 0.0

    def __post_init__(self):
        for name, value in dataclasses.asdict(self).items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"TraceNoise.{name}={value} must be in [0, 1]")


# ------------------------------------------------------------------------------------------------ sub-problems


def _add_trace(problem: str, rng: np.random.Generator | None, noise: TraceNoise) -> tuple[str, str]:
    a, b = (int(x) for x in problem.split("+"))
    slip = rng is not None and rng.random() < noise.slip
    drop = rng is not None and rng.random() < noise.carry_drop
    rec = arithmetic_record(a, "+", b, wrong_step=-1 if slip else None, rng=rng, drop_carries=drop)
    return ";".join(rec["steps"]), rec["answer"]


def _sort_trace(problem: str, rng: np.random.Generator | None, noise: TraceNoise) -> tuple[str, str]:
    digits = sorted(problem.split()[1])
    if rng is not None and rng.random() < noise.slip:  # two neighbours swapped; the answer follows the trace
        i = int(rng.integers(len(digits) - 1))
        digits[i], digits[i + 1] = digits[i + 1], digits[i]
    relations = ["=" if x == y else "<" for x, y in itertools.pairwise(digits)]
    trace = digits[0] + "".join(r + d for r, d in zip(relations, digits[1:], strict=True))
    return trace, "".join(digits)


def _parity_trace(problem: str, rng: np.random.Generator | None, noise: TraceNoise) -> tuple[str, str]:
    bits = problem.split()[1]
    wrong = int(rng.integers(len(bits))) if rng is not None and rng.random() < noise.slip else -1
    counts, count = [], 0
    for i, bit in enumerate(bits):
        count += bit == "1"
        if i == wrong:  # a miscount, carried on by the later steps
            count = count + 1 if count == 0 or rng.random() < 0.5 else count - 1
        counts.append(count)
    return ",".join(str(c) for c in counts), "odd" if counts[-1] % 2 else "even"


_TRACES = {"add": _add_trace, "sort": _sort_trace, "parity": _parity_trace}


def solve(problem: str, source: str, *, rng: np.random.Generator | None = None, noise: TraceNoise | None = None):
    """``(trace, answer)`` of one sub-problem; with ``rng`` and ``noise`` the trace may carry an error (and the
    answer follows the trace). Without them the trace is correct."""
    if source not in _TRACES:
        raise ValueError(f"unknown sub-problem source {source!r}; expected one of {SOURCES}")
    return _TRACES[source](problem, rng, noise or TraceNoise())


def _split_of(key: str, test_fraction: float) -> str:
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2.0**64
    return "test" if h < test_fraction else "train"


def _draw_problem(source: str, rng: np.random.Generator, digits: tuple[int, int], bits: tuple[int, int]) -> tuple:
    """``(problem text, split key)`` of a random sub-problem of ``source``."""
    if source == "add":
        a, b = (
            int(rng.integers(0 if d == 1 else 10 ** (d - 1), 10**d))
            for d in rng.integers(*digits, size=2, endpoint=True)
        )
        return f"{a}+{b}", problem_key(a, "+", b)
    if source == "sort":
        text = f"sort {''.join(str(d) for d in rng.integers(0, 10, size=3))}"
        return text, text
    n = int(rng.integers(bits[0], bits[1] + 1))
    text = f"parity {''.join(str(b) for b in rng.integers(0, 2, size=n))}"
    return text, text


def make_compound_records(
    split: str,
    n: int,
    seed: int,
    *,
    pool_size: int = 4,
    sources: Sequence[str] = SOURCES,
    digits: tuple[int, int] = (1, 2),
    bits: tuple[int, int] = (3, 5),
    test_fraction: float = 0.1,
) -> list[dict]:
    """``n`` pool records of split ``'train'`` or ``'test'``; deterministic in the arguments.

    Each record holds ``pool_size`` sub-problems whose kinds cycle through a random order of ``sources`` (so any
    ``len(sources)`` consecutive entries are of different kinds). A sub-problem belongs to one split by a hash of
    its text (``47+85`` and ``85+47`` share one), so train and test records never share a sub-problem.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split {split!r}: expected 'train' or 'test'")
    bad = [s for s in sources if s not in SOURCES]
    if bad or not sources:
        raise ValueError(f"sources={list(sources)}: expected a non-empty subset of {SOURCES}")
    if pool_size < 1:
        raise ValueError(f"pool_size={pool_size} must be >= 1")
    if not (1 <= digits[0] <= digits[1] and 1 <= bits[0] <= bits[1]):
        raise ValueError(f"digits={digits} and bits={bits} must be (min, max) ranges with 1 <= min <= max")
    rng = np.random.default_rng([seed, 0 if split == "train" else 1, 7])
    records = []
    for _ in range(n):
        order = [sources[int(i)] for i in rng.permutation(len(sources))]
        kinds = [order[i % len(order)] for i in range(pool_size)]
        problems = []
        for kind in kinds:
            for _attempt in range(10_000):
                text, key = _draw_problem(kind, rng, digits, bits)
                if _split_of(key, test_fraction) == split:
                    break
            else:
                raise ValueError(f"no {split} sub-problem of kind {kind!r} with digits={digits}, bits={bits}")
            problems.append(text)
        answers = [solve(p, k)[1] for p, k in zip(problems, kinds, strict=True)]
        records.append({"problems": problems, "answers": answers, "sources": kinds})
    return records


# ----------------------------------------------------------------------------------------------------- rendering


def compound_prompt(problems: Sequence[str]) -> str:
    """``Solve the following k problems. Problem 1: q_1 ... Problem k: q_k`` and the answer cue ``\\nA: ``."""
    k = len(problems)
    listed = " ".join(f"Problem {j}: {q}" for j, q in enumerate(problems, 1))
    return f"Solve the following {k} problem{'s' if k != 1 else ''}. {listed}\nA: "


def format_answer_block(answers: Sequence[str]) -> str:
    """``<answer> \\boxed{a_1} ... \\boxed{a_k} </answer>``."""
    return "<answer> " + " ".join(f"\\boxed{{{a}}}" for a in answers) + " </answer>"


def length_budget(k: int, base: int, per_problem: int) -> int:
    """New-token budget of a k-problem prompt: ``base + per_problem * k`` (the budget grows with k)."""
    return base + per_problem * k


def encode_ground_truth(answers: Sequence[str], sources: Sequence[str], fmt: str, max_new_tokens: int) -> str:
    return json.dumps(
        {"answers": list(answers), "sources": list(sources), "format": fmt, "max_new_tokens": int(max_new_tokens)}
    )


def decode_ground_truth(ground_truth: str) -> dict:
    """The dict of ``encode_ground_truth``; a bare JSON list is read as the answers (no format, no budget)."""
    try:
        value = json.loads(ground_truth)
    except (TypeError, json.JSONDecodeError) as err:
        raise ValueError(f"compound ground truth {ground_truth!r} is not JSON: {err}") from err
    if isinstance(value, list):
        value = {"answers": value}
    if not isinstance(value, dict) or not isinstance(value.get("answers"), list) or not value["answers"]:
        raise ValueError(f"compound ground truth {ground_truth!r}: expected a JSON object with a non-empty 'answers'")
    value["answers"] = [str(a) for a in value["answers"]]
    return value


def render_response(
    problems: Sequence[str],
    sources: Sequence[str],
    fmt: str,
    *,
    rng: np.random.Generator | None = None,
    noise: TraceNoise | None = None,
) -> str:
    """The trace and answer block of ``problems`` in format ``fmt`` (noise needs ``rng``; see ``TraceNoise``)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown response format {fmt!r}; expected one of {FORMATS}")
    noise = noise or TraceNoise()
    if rng is None and noise != TraceNoise():
        raise ValueError("trace noise needs an rng")
    segments, answers = [], []
    for j, (problem, source) in enumerate(zip(problems, sources, strict=True), 1):
        trace, answer = solve(problem, source, rng=rng, noise=noise)
        text = f"{problem}: {trace} so {answer}."  # restating the problem turns the lookup into a copy
        if rng is not None and rng.random() < noise.hesitation:
            text = f"{HESITATIONS[int(rng.integers(len(HESITATIONS)))]}, {text}"
        segments.append(f"[scene {j}] {ROLES[source]}: {text}" if fmt == "dialogue" else text)
        answers.append(answer)
    if rng is not None and rng.random() < noise.box_error:
        i = int(rng.integers(len(answers)))
        answers = answers[:i] + answers[i + 1 :] if rng.random() < 0.5 else answers[: i + 1] + answers[i:]
    return f"<think>{' '.join(segments)}</think>{format_answer_block(answers)}"


def choose_view(record: dict, rng: np.random.Generator, k_weights: Sequence[float]) -> list[int]:
    """Pool positions of one view: k ~ ``k_weights`` (entry i weighs k = i + 1; k beyond the pool is not drawn),
    entries of kinds not yet chosen first (so up to ``len(SOURCES)`` sub-problems are of different kinds), in a
    random order."""
    m = len(record["problems"])
    w = np.asarray(k_weights, np.float64)[:m]
    if w.size == 0 or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"k_weights={list(k_weights)} must be >= 0 with a positive weight on some k <= {m}")
    k = int(rng.choice(len(w), p=w / w.sum())) + 1
    seen, fresh, rest = set(), [], []
    for i in rng.permutation(m):
        (rest if record["sources"][i] in seen else fresh).append(int(i))
        seen.add(record["sources"][i])
    chosen = (fresh + rest)[:k]
    return [chosen[int(i)] for i in rng.permutation(k)]


def render_view(
    record: dict,
    positions: Sequence[int],
    fmt: str,
    *,
    budget: tuple[int, int] = (48, 48),
    rng: np.random.Generator | None = None,
    noise: TraceNoise | None = None,
) -> dict:
    """A training/eval record of the pool entries at ``positions`` (in that order): ``prompt``, ``response``,
    ``ground_truth`` (JSON), ``question``, ``k``, ``answers``, ``sources``, ``max_new_tokens`` (``length_budget``
    with ``budget = (base, per_problem)``)."""
    for key in ("problems", "answers", "sources"):
        if not isinstance(record.get(key), list) or len(record[key]) != len(record.get("problems", ())):
            raise ValueError(f"compound record {record!r}: '{key}' must be a list as long as 'problems'")
    problems = [record["problems"][i] for i in positions]
    sources = [record["sources"][i] for i in positions]
    answers = [str(record["answers"][i]) for i in positions]
    max_new = length_budget(len(problems), *budget)
    return {
        "question": " | ".join(problems),
        "prompt": compound_prompt(problems),
        "response": render_response(problems, sources, fmt, rng=rng, noise=noise),
        "ground_truth": encode_ground_truth(answers, sources, fmt, max_new),
        "k": len(problems),
        "answers": answers,
        "sources": sources,
        "max_new_tokens": max_new,
    }


class CompoundQASource:
    """Random-access source (grain protocol) of rendered views: item ``e * n + i`` is pool record ``i`` rendered
    for epoch ``e``, with k, order and trace noise drawn from ``rng([seed, e, i])``; ``len = n * epochs``."""

    def __init__(
        self,
        records: Sequence[dict],
        *,
        fmt: str,
        seed: int,
        epochs: int = 1,
        k_weights: Sequence[float] = (1.0,),
        budget: tuple[int, int] = (48, 48),
        noise: TraceNoise | None = None,
    ):
        if not records or epochs < 1:
            raise ValueError(f"CompoundQASource needs records and epochs >= 1 (got {len(records)}, {epochs})")
        if fmt not in FORMATS:
            raise ValueError(f"unknown response format {fmt!r}; expected one of {FORMATS}")
        self.records, self.fmt, self.seed, self.epochs = list(records), fmt, seed, epochs
        self.k_weights, self.budget, self.noise = tuple(k_weights), tuple(budget), noise

    def __len__(self) -> int:
        return len(self.records) * self.epochs

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        epoch, i = divmod(int(index), len(self.records))
        rng = np.random.default_rng([self.seed, epoch, i])
        positions = choose_view(self.records[i], rng, self.k_weights)
        return render_view(self.records[i], positions, self.fmt, budget=self.budget, rng=rng, noise=self.noise)


class CompoundPromptIterator:
    """Endless batches of rendered views for RL, reshuffled and re-rendered (k, order) every epoch; resumable.

    The same interface as ``stepjax.rl.rollout.PromptIterator`` (``next``, ``get_state``, ``set_state``), but the
    pool records are rendered when drawn, seeded by ``(seed, epoch, record index)``.
    """

    def __init__(
        self,
        records: Sequence[dict],
        batch_size: int,
        *,
        fmt: str,
        seed: int,
        k_weights: Sequence[float] = (1.0,),
        budget: tuple[int, int] = (48, 48),
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.source = CompoundQASource(records, fmt=fmt, seed=seed, k_weights=k_weights, budget=budget)
        self.batch_size, self.seed = batch_size, seed
        self.epoch, self.index = 0, 0

    def __iter__(self) -> CompoundPromptIterator:
        return self

    def __next__(self) -> list[dict]:
        n = len(self.source.records)
        out = []
        while len(out) < self.batch_size:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(n)
            for i in order[self.index : self.index + self.batch_size - len(out)]:
                rng = np.random.default_rng([self.seed, self.epoch, int(i)])
                record = self.source.records[int(i)]
                positions = choose_view(record, rng, self.source.k_weights)
                out.append(render_view(record, positions, self.source.fmt, budget=self.source.budget))
                self.index += 1
            if self.index >= n:
                self.epoch, self.index = self.epoch + 1, 0
        return out

    def get_state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def set_state(self, state: dict[str, int]) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


def fixed_k_views(records: Sequence[dict], k: int, fmt: str, *, seed: int, budget: tuple[int, int] = (48, 48)):
    """Evaluation views with exactly ``k`` sub-problems per record (kinds distinct up to ``len(SOURCES)``), one per
    pool record, deterministic in ``seed``."""
    one_hot = [0.0] * (k - 1) + [1.0]
    out = []
    for i, record in enumerate(records):
        if len(record["problems"]) < k:
            raise ValueError(f"record {i} has {len(record['problems'])} sub-problems; k={k} needs that many")
        positions = choose_view(record, np.random.default_rng([seed, k, i]), one_hot)
        out.append(render_view(record, positions, fmt, budget=budget))
    return out

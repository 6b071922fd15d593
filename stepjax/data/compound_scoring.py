"""Scoring Compound-QA replies: positional answers, the response-format check, and the diversity/coherency proxies.

``score_compound`` reads the one ``<answer>...</answer>`` block of a reply and its ``\\boxed{}`` contents in order;
box j is compared with answer j by the ORZ checker (``stepjax.data.answers.answers_match``). Positional matching only:
a right answer in the wrong slot is wrong. A reply is *rejected* (every position wrong, the reason recorded) when it
has no answer block, more than one, or a box count different from k (``missing_box``: fewer; ``duplicate_box``:
more, e.g. an answer written twice). Acc(k) = mean of the positions, AllAcc(k) = 1 iff all are right.

``check_format`` is the gate of the rewards: ``<think>BODY</think><answer>...</answer>``, one answer block, nothing
after it; in the ``dialogue`` format BODY must be exactly the scenes ``[scene 1] .. [scene k]`` in order, each opened
by a character (``Name: ...``); in ``monologue`` BODY is free text without scene markers.

The diversity and coherency scores below are *proxies* (llm-rl.md §3.1 [proposal]), not the paper's metrics (which
are unknown): diversity counts distinct characters / strategies across the sub-problems, coherency counts
hesitation markers and returns to an earlier sub-problem.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import numpy as np

from stepjax.data.answers import answers_match

_ANSWER_BLOCK = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_BOXED = re.compile(r"\\boxed\s*\{")
_LAYOUT = re.compile(r"^\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*$", re.DOTALL)
_SCENE = re.compile(r"\[scene (\d+)\]")
_SPEAKER = re.compile(r"^\s*([A-Z][A-Za-z]*):\s*\S")
_HESITATION = re.compile(r"\b(wait|hmm+|alternatively)\b", re.IGNORECASE)
_BACK_TO = re.compile(r"\b(?:back to|return to|revisit)\s+(?:problem|scene)\s+(\d+)", re.IGNORECASE)
REJECT_REASONS = ("no_answer", "duplicate_answer_block", "missing_box", "duplicate_box")


@dataclasses.dataclass(frozen=True)
class CompoundScore:
    """``correct[j]``: position j right; ``rejected``: None or one of ``REJECT_REASONS`` (then all are wrong)."""

    correct: tuple[bool, ...]
    rejected: str | None = None

    @property
    def k(self) -> int:
        return len(self.correct)

    @property
    def accuracy(self) -> float:
        """Acc(k) of this reply: the fraction of positions answered right."""
        return float(np.mean(self.correct))

    @property
    def all_correct(self) -> bool:
        """AllAcc(k) of this reply."""
        return all(self.correct)


def _braced(text: str, start: int) -> str | None:
    """Content of the brace group opened just before ``text[start]``; None if unbalanced."""
    depth = 1
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i]
    return None


def boxed_answers(block: str) -> list[str | None]:
    """Contents of every ``\\boxed{...}`` in ``block``, in order (None for an unbalanced one)."""
    out = []
    for m in _BOXED.finditer(block):
        content = _braced(block, m.end())
        out.append(None if content is None else content.strip())
    return out


def score_compound(completion: str, answers: Sequence[str]) -> CompoundScore:
    """Scores a reply against ``answers`` (length k) position by position (see the module docstring)."""
    k = len(answers)
    if k < 1:
        raise ValueError("score_compound needs at least one ground-truth answer")
    wrong = (False,) * k
    blocks = _ANSWER_BLOCK.findall(completion)
    if not blocks:
        return CompoundScore(wrong, "no_answer")
    if len(blocks) > 1:
        return CompoundScore(wrong, "duplicate_answer_block")
    boxes = boxed_answers(blocks[0])
    if len(boxes) < k:
        return CompoundScore(wrong, "missing_box")
    if len(boxes) > k:
        return CompoundScore(wrong, "duplicate_box")
    return CompoundScore(tuple(answers_match(b, str(a)) for b, a in zip(boxes, answers, strict=True)))


def summarize_scores(scores: Sequence[CompoundScore]) -> dict[str, float]:
    """Batch metrics over replies of any mix of k: ``acc_k{k}``, ``all_acc_k{k}``, ``count_k{k}`` per k present,
    ``pos_acc_{j}`` (position j, over replies with k >= j), ``acc``/``all_acc`` over all replies, and
    ``rejected_<reason>`` counts."""
    out: dict[str, float] = {}
    if not scores:
        return out
    for k in sorted({s.k for s in scores}):
        group = [s for s in scores if s.k == k]
        out[f"acc_k{k}"] = float(np.mean([s.accuracy for s in group]))
        out[f"all_acc_k{k}"] = float(np.mean([s.all_correct for s in group]))
        out[f"count_k{k}"] = float(len(group))
    for j in range(max(s.k for s in scores)):
        out[f"pos_acc_{j + 1}"] = float(np.mean([s.correct[j] for s in scores if s.k > j]))
    out["acc"] = float(np.mean([s.accuracy for s in scores]))
    out["all_acc"] = float(np.mean([s.all_correct for s in scores]))
    for reason in REJECT_REASONS:
        out[f"rejected_{reason}"] = float(sum(s.rejected == reason for s in scores))
    return out


# ------------------------------------------------------------------------------------------------------- format


def dialogue_segments(body: str) -> list[tuple[int, str]]:
    """``(scene number, text)`` of every ``[scene j]`` in ``body``, in order of appearance."""
    marks = list(_SCENE.finditer(body))
    return [
        (int(m.group(1)), body[m.end() : marks[i + 1].start() if i + 1 < len(marks) else len(body)])
        for i, m in enumerate(marks)
    ]


def check_format(completion: str, k: int, fmt: str) -> str | None:
    """None when ``completion`` is well formed for ``k`` sub-problems in format ``fmt`` ('monologue' |
    'dialogue'), else a short reason (``layout``, ``scene_order``, ``speaker``, ``scene_in_monologue``, ...)."""
    if fmt not in ("monologue", "dialogue"):
        raise ValueError(f"unknown response format {fmt!r}; expected 'monologue' or 'dialogue'")
    if len(_ANSWER_BLOCK.findall(completion)) != 1:
        return "answer_blocks"
    m = _LAYOUT.match(completion)
    if m is None:
        return "layout"
    body = m.group(1)
    if fmt == "monologue":
        if _SCENE.search(body):
            return "scene_in_monologue"
        return None if body.strip() else "empty_think"
    first = _SCENE.search(body)
    if first is None:
        return "no_scenes"
    if body[: first.start()].strip():
        return "text_before_scene_1"
    segments = dialogue_segments(body)
    if [j for j, _ in segments] != list(range(1, k + 1)):
        return "scene_order"
    if not all(_SPEAKER.match(text) for _, text in segments):
        return "speaker"
    return None


def format_ok(completion: str, k: int, fmt: str) -> bool:
    return check_format(completion, k, fmt) is None


# ------------------------------------------------------------------------------------------------------- proxies


def _think_body(completion: str) -> str:
    """The text after the first ``<think>`` up to ``</think>`` (or the end); empty without ``<think>``."""
    start = completion.find("<think>")
    if start < 0:
        return ""
    body = completion[start + len("<think>") :]
    end = body.find("</think>")
    return body if end < 0 else body[:end]


def segment_strategy(text: str) -> str:
    """A strategy tag read off a segment's content (a proxy): ``column_add`` (``x+y=``), ``compare_sort``
    (``a<b``), ``running_count`` (``1,2,...``), else ``other``."""
    if re.search(r"\d\+\d.*=", text):
        return "column_add"
    if re.search(r"\d[<=]\d", text):
        return "compare_sort"
    if re.search(r"\d,\d", text):
        return "running_count"
    return "other"


def reply_segments(completion: str) -> list[str]:
    """Per-sub-problem segments of the think part: scenes in the dialogue format, else sentences (``. ``)."""
    body = _think_body(completion)
    scenes = dialogue_segments(body)
    if scenes:
        return [text for _, text in scenes]
    return [s for s in re.split(r"\.\s+|\.$", body.strip()) if s.strip()]


def diversity_proxy(completion: str) -> float:
    """PROXY for DialogueReason's *diversity*: distinct characters (dialogue) or strategy tags (monologue,
    ``segment_strategy``) over the number of segments; 0 without segments. Not the paper's metric."""
    segments = reply_segments(completion)
    if not segments:
        return 0.0
    tags = []
    for text in segments:
        speaker = _SPEAKER.match(text)
        tags.append(speaker.group(1) if speaker else segment_strategy(text))
    return len(set(tags)) / len(segments)


def strategy_match(completion: str, sources: Sequence[str]) -> float:
    """PROXY: the fraction of sub-problems whose segment (same position) uses the strategy of its kind
    (add -> column_add, sort -> compare_sort, parity -> running_count); a missing segment counts as a miss."""
    wanted = {"add": "column_add", "sort": "compare_sort", "parity": "running_count"}
    segments = reply_segments(completion)
    hits = [j < len(segments) and segment_strategy(segments[j]) == wanted.get(s) for j, s in enumerate(sources)]
    return float(np.mean(hits)) if hits else 0.0


def hesitation_count(completion: str) -> int:
    """Hesitation markers (``wait``, ``hmm``, ``alternatively``) in the think part."""
    return len(_HESITATION.findall(_think_body(completion)))


def return_count(completion: str) -> int:
    """Returns to an earlier sub-problem: a scene number lower than one already opened, or ``back to problem j``
    with j below the latest one mentioned."""
    body = _think_body(completion)
    marks = [(m.start(), int(m.group(1))) for m in _SCENE.finditer(body)]
    marks += [(m.start(), int(m.group(1))) for m in _BACK_TO.finditer(body)]
    latest, returns = 0, 0
    for _, j in sorted(marks):
        if j < latest:
            returns += 1
        latest = max(latest, j)
    return returns


def coherency_proxy(completion: str) -> float:
    """PROXY for DialogueReason's *coherency*: ``1 / (1 + hesitations + returns)`` (1 = no hesitation marker and
    no return to an earlier sub-problem). Not the paper's metric."""
    return 1.0 / (1.0 + hesitation_count(completion) + return_count(completion))

"""Rule-based step segmentation of a chain of thought (llm-rl.md §4.3, §5.1).

- ``SeparatorSegmenter``: split on a fixed separator; ``"\\n\\n"`` is the paper's SDN (split on double newline).
- ``ReflectionSegmenter`` (SRW): split before reflection words ("wait", "alternatively", "hmm", "let me check", ...),
  then merge pieces shorter than ``min_chars`` into their predecessor (or the first into its successor).

Any callable ``text -> list[str]`` is a ``Segmenter`` (a learned segmenter such as SaT plugs in the same way);
``register_segmenter``/``get_segmenter`` name them for configs. A text with no step raises ``SegmentationError``;
``segment_batch`` skips such samples, counts them and warns with the sample's index or id.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

logger = logging.getLogger(__name__)

REFLECTION_WORDS = ("wait", "alternatively", "hmm", "let me check", "let me double-check", "but wait", "however")


class SegmentationError(ValueError):
    """A text that cannot be split into at least one non-empty step."""


@runtime_checkable
class Segmenter(Protocol):
    def __call__(self, text: str) -> list[str]: ...


def _require_steps(text: str, steps: list[str], how: str) -> list[str]:
    if not steps:
        raise SegmentationError(f"no step found by {how} in text {text[:60]!r} (length {len(text)})")
    return steps


@dataclass(frozen=True)
class SeparatorSegmenter:
    """Split on ``separator``; pieces are stripped and empty ones dropped."""

    separator: str = "\n\n"

    def __post_init__(self):
        if not self.separator:
            raise ValueError("SeparatorSegmenter.separator must be a non-empty string")

    def __call__(self, text: str) -> list[str]:
        steps = [p.strip() for p in text.split(self.separator)]
        return _require_steps(text, [p for p in steps if p], f"separator {self.separator!r}")


@dataclass(frozen=True)
class ReflectionSegmenter:
    """SRW: a new step starts at each reflection word (whole word, case-insensitive) and at each ``separator``
    (None: none); pieces shorter than ``min_chars`` are merged with their predecessor (the first with its successor).
    """

    words: tuple[str, ...] = REFLECTION_WORDS
    min_chars: int = 20
    separator: str | None = "\n\n"

    def __post_init__(self):
        if not self.words:
            raise ValueError("ReflectionSegmenter.words must name at least one reflection word")
        if self.min_chars < 0:
            raise ValueError(f"ReflectionSegmenter.min_chars must be >= 0, got {self.min_chars}")

    def _split_points(self, text: str) -> list[int]:
        # Longest first so "but wait" wins over "wait" at the same place.
        words = sorted(self.words, key=len, reverse=True)
        pattern = r"\b(?:" + "|".join(re.escape(w) for w in words) + r")\b"
        return [m.start() for m in re.finditer(pattern, text, flags=re.IGNORECASE)]

    def __call__(self, text: str) -> list[str]:
        chunks = text.split(self.separator) if self.separator else [text]
        pieces: list[str] = []
        for chunk in chunks:
            cuts = [0, *[p for p in self._split_points(chunk) if p > 0], len(chunk)]
            pieces += [chunk[a:b].strip() for a, b in itertools.pairwise(cuts)]
        pieces = [p for p in pieces if p]
        merged: list[str] = []
        for p in pieces:
            # A short piece joins its predecessor; a short first piece takes in its successor.
            if merged and (len(p) < self.min_chars or len(merged[-1]) < self.min_chars):
                merged[-1] = f"{merged[-1]} {p}"
            else:
                merged.append(p)
        return _require_steps(text, merged, "reflection words")


_SEGMENTERS: dict[str, Callable[..., Segmenter]] = {}


def register_segmenter(name: str, factory: Callable[..., Segmenter]) -> None:
    """Names a segmenter factory (keyword options -> ``Segmenter``) for configs."""
    if name in _SEGMENTERS:
        raise ValueError(f"segmenter {name!r} is already registered")
    _SEGMENTERS[name] = factory


def get_segmenter(name: str, **options) -> Segmenter:
    """A registered segmenter: ``get_segmenter("sdn")``, ``get_segmenter("separator", separator="\\n")``,
    ``get_segmenter("srw", min_chars=8)``."""
    if name not in _SEGMENTERS:
        raise KeyError(f"unknown segmenter {name!r}; registered: {sorted(_SEGMENTERS)}")
    return _SEGMENTERS[name](**options)


def registered_segmenters() -> list[str]:
    return sorted(_SEGMENTERS)


register_segmenter("separator", SeparatorSegmenter)
register_segmenter("sdn", lambda: SeparatorSegmenter("\n\n"))
register_segmenter("srw", ReflectionSegmenter)


def segment_batch(
    texts: Sequence[str], segmenter: Segmenter, *, ids: Sequence[object] | None = None
) -> tuple[list[tuple[int, list[str]]], list[int]]:
    """Segments every text; skips (and warns about) those that raise ``SegmentationError``.

    Returns ``(kept, skipped)``: ``kept`` holds ``(index, steps)`` for the segmented texts, ``skipped`` the indices of
    the others. ``ids`` (same length as ``texts``) name the samples in the warning.
    """
    if ids is not None and len(ids) != len(texts):
        raise ValueError(f"ids has {len(ids)} entries for {len(texts)} texts")
    kept, skipped = [], []
    for i, text in enumerate(texts):
        try:
            kept.append((i, segmenter(text)))
        except SegmentationError as e:
            name = f"index {i}" if ids is None else f"index {i} (id {ids[i]!r})"
            logger.warning("skipping sample %s: %s", name, e)
            skipped.append(i)
    if skipped:
        logger.warning("segmentation skipped %d of %d samples", len(skipped), len(texts))
    return kept, skipped

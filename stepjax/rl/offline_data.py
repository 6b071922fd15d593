"""Offline policy-gradient data (BCPG-NSA, llm-rl.md §4.3): records of sampled groups with per-token reference
log-probs and labelled step spans, and the training rows built from them.

Record (one prompt and its ``G`` responses, one JSON line)::

    {"x": prompt, "ground_truth": str, "question": str,
     "responses": [{"tokens": [int], "r": 0|1, "logp_ref": [float per token],
                    "steps": [[start, end, I], ...],     # token spans inside "tokens"; negatives only
                    "step_truth": [0|1, ...]}]}           # optional: the noise-free label of each step

``tokens`` are the response's token ids (the stop token included when the sample stopped); a step span
``[start, end)`` indexes them. ``I = 1`` marks a step the judges accept as correct. Rows (``encode_offline_rows``)
lay each response out in the LM-loss layout (``inputs``/``targets``/``loss_mask``/``positions``, as
``stepjax.rl.rollout``) with ``ref_log_probs``, ``step_mask`` (tokens of ``I = 1`` steps of negatives),
``true_step_mask`` and ``error_step_mask`` (tokens of truly correct / truly wrong steps of negatives, for analysis),
``rewards`` and ``baselines`` (the group mean reward ``r_bar``, precomputed so any batching is exact).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stepjax.data.sources import MalformedRecordError


class StepLocationError(ValueError):
    """A step text that cannot be found, in order, inside its response."""


@dataclass
class OfflineResponse:
    """One sampled response. ``steps``: ``(start, end, I)`` token spans (negatives only); ``step_truth``: the
    noise-free label per step when known (synthetic data), else empty."""

    tokens: list[int]
    r: float
    logp_ref: list[float]
    steps: list[tuple[int, int, int]] = field(default_factory=list)
    step_truth: list[int] = field(default_factory=list)


@dataclass
class OfflineRecord:
    """A prompt ``x`` and its sampled responses (one group)."""

    x: str
    ground_truth: str
    responses: list[OfflineResponse]
    question: str = ""

    @property
    def uniform(self) -> bool:
        """All responses right or all wrong: ``r - r_bar = 0`` for every response (no policy gradient)."""
        return len({float(r.r) for r in self.responses}) <= 1

    def to_json(self) -> dict[str, Any]:
        responses = []
        for r in self.responses:
            item: dict[str, Any] = {"tokens": [int(t) for t in r.tokens], "r": float(r.r)}
            item["logp_ref"] = [float(v) for v in r.logp_ref]
            item["steps"] = [[int(a), int(b), int(i)] for a, b, i in r.steps]
            if r.step_truth:
                item["step_truth"] = [int(v) for v in r.step_truth]
            responses.append(item)
        return {"x": self.x, "ground_truth": self.ground_truth, "question": self.question, "responses": responses}


def record_from_json(data: Any, where: str = "record") -> OfflineRecord:
    """Parses and checks one record; a ``MalformedRecordError`` names ``where`` and the bad key."""

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise MalformedRecordError(f"{where}: {what}")

    need(isinstance(data, dict), f"expected a JSON object, got {type(data).__name__}")
    for key in ("x", "ground_truth", "responses"):
        need(key in data, f"missing key {key!r}; expected keys x, ground_truth, responses")
    need(isinstance(data["x"], str), "'x' must be a string (the prompt)")
    need(isinstance(data["responses"], list) and data["responses"], "'responses' must be a non-empty list")
    responses = []
    for j, item in enumerate(data["responses"]):
        at = f"responses[{j}]"
        need(isinstance(item, dict), f"{at} must be an object")
        for key in ("tokens", "r", "logp_ref"):
            need(key in item, f"{at} is missing {key!r}; expected tokens, r, logp_ref, steps")
        tokens, logp = item["tokens"], item["logp_ref"]
        need(
            isinstance(tokens, list) and all(isinstance(t, int) for t in tokens), f"{at}.tokens must be a list of ints"
        )
        need(isinstance(logp, list) and len(logp) == len(tokens), f"{at}.logp_ref needs one value per token")
        need(all(np.isfinite(v) for v in logp), f"{at}.logp_ref holds a non-finite value")
        need(isinstance(item["r"], int | float), f"{at}.r must be a number")
        steps = item.get("steps", [])
        need(isinstance(steps, list), f"{at}.steps must be a list of [start, end, I]")
        for k, s in enumerate(steps):
            ok = isinstance(s, list | tuple) and len(s) == 3 and s[2] in (0, 1)
            need(
                ok and 0 <= s[0] < s[1] <= len(tokens),
                f"{at}.steps[{k}] = {s!r}; expected [start, end, I] with "
                f"0 <= start < end <= {len(tokens)} and I in (0, 1)",
            )
        truth = item.get("step_truth", [])
        need(not truth or len(truth) == len(steps), f"{at}.step_truth needs one label per step")
        responses.append(
            OfflineResponse(tokens, float(item["r"]), [float(v) for v in logp], [tuple(s) for s in steps], list(truth))
        )
    return OfflineRecord(data["x"], str(data["ground_truth"]), responses, str(data.get("question", "")))


def write_offline_records(path: str | os.PathLike, records: Sequence[OfflineRecord]) -> None:
    """One JSON line per record, written atomically."""
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "w") as f:
        for record in records:
            f.write(json.dumps(record.to_json()) + "\n")
    os.replace(tmp, path)


def read_offline_records(path: str | os.PathLike) -> list[OfflineRecord]:
    """Reads a file of ``write_offline_records``; a bad line raises ``MalformedRecordError`` naming file:line."""
    records = []
    with open(path) as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{os.fspath(path)}:{line_number}"
            try:
                data = json.loads(line)
            except json.JSONDecodeError as err:
                raise MalformedRecordError(f"{where}: invalid JSON ({err.msg})") from None
            records.append(record_from_json(data, where))
    return records


# ------------------------------------------------------------------------------------------------- step spans


def step_char_spans(text: str, steps: Sequence[str]) -> list[tuple[int, int]]:
    """``[start, end)`` character spans of ``steps`` found in order in ``text`` (each after the previous one)."""
    spans, cursor = [], 0
    for k, step in enumerate(steps):
        start = text.find(step, cursor) if step else -1
        if start < 0:
            raise StepLocationError(f"step {k} ({step[:40]!r}) not found after character {cursor} of the response")
        spans.append((start, start + len(step)))
        cursor = start + len(step)
    return spans


def token_byte_offsets(tokenizer: Any, tokens: Sequence[int]) -> np.ndarray:
    """``[n + 1]`` UTF-8 byte offsets: token ``t`` covers bytes ``[o[t], o[t + 1])`` of ``decode(tokens)``.

    ``o[k]`` is the length of the longest common prefix of ``decode(tokens[:k])`` and ``decode(tokens)``: a prefix
    that ends inside a multi-byte character (decoded as U+FFFD) counts up to that character's start, so the offsets
    never run ahead of the text. A stop or special token has width 0.
    """
    full = tokenizer.decode(list(tokens)).encode("utf-8")
    offsets = np.zeros(len(tokens) + 1, np.int64)
    for k in range(1, len(tokens) + 1):
        prefix = tokenizer.decode(list(tokens[:k])).encode("utf-8")
        if full.startswith(prefix):
            offsets[k] = len(prefix)
        else:  # rare: a cut character; find the common prefix
            common = next((i for i, (a, b) in enumerate(zip(prefix, full, strict=False)) if a != b), len(prefix))
            offsets[k] = min(common, len(full))
    return np.maximum.accumulate(offsets)


def char_to_token_spans(text: str, offsets: np.ndarray, char_spans: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Token spans of character spans of ``text`` (the decode of the tokens behind ``offsets``): a step gets the
    tokens that start inside it (a token straddling a step's start belongs to the step before)."""
    starts = offsets[:-1]
    out = []
    for a, b in char_spans:
        byte_a, byte_b = len(text[:a].encode("utf-8")), len(text[:b].encode("utf-8"))
        first = int(np.searchsorted(starts, byte_a, side="left"))
        last = int(np.searchsorted(starts, byte_b, side="left"))
        out.append((first, max(last, first + 1) if first < len(starts) else first))
    return out


def step_token_spans(tokenizer: Any, tokens: Sequence[int], steps: Sequence[str]) -> list[tuple[int, int]]:
    """Token spans ``[start, end)`` of step texts inside a response's tokens (``StepLocationError`` if a step is not
    in the decoded text). With a byte tokenizer, ``decode(tokens[start:end]) == step`` exactly."""
    text = tokenizer.decode(list(tokens))
    return char_to_token_spans(text, token_byte_offsets(tokenizer, tokens), step_char_spans(text, steps))


# ------------------------------------------------------------------------------------------------------- rows


ROW_KEYS = (
    "inputs",
    "targets",
    "loss_mask",
    "positions",
    "ref_log_probs",
    "step_mask",
    "true_step_mask",
    "error_step_mask",
    "rewards",
    "baselines",
    "groups",
)


def encode_offline_rows(
    tokenizer: Any,
    records: Sequence[OfflineRecord],
    width: int,
    *,
    drop_uniform_groups: bool = False,
    positives_only: bool = False,
) -> dict[str, np.ndarray]:
    """Training rows of every response: ``[BOS] x tokens`` right-padded to ``width + 1`` tokens, shifted.

    Args:
      width: row length ``L`` (a response longer than fits raises ``ValueError`` naming record and response).
      drop_uniform_groups: leave out groups whose responses all have the same reward (the paper drops them).
      positives_only: keep only ``r > 0`` responses (RFT's data); ``r_bar`` is still over the whole group.
    Returns:
      ``ROW_KEYS`` arrays: ``[N, L]`` per token, ``rewards``/``baselines``/``groups`` ``[N]`` (``groups``: record
      index).
    """
    rows: dict[str, list] = {k: [] for k in ROW_KEYS}
    prefix = [tokenizer.bos_id] if tokenizer.bos_id is not None else []
    for g, record in enumerate(records):
        if drop_uniform_groups and record.uniform:
            continue
        prompt = prefix + list(tokenizer.encode(record.x))
        r_bar = float(np.mean([r.r for r in record.responses]))
        for j, response in enumerate(record.responses):
            if positives_only and response.r <= 0:
                continue
            tokens = prompt + list(response.tokens)
            if len(tokens) > width + 1:
                raise ValueError(
                    f"record {g} ({record.question or record.x[:40]!r}) response {j}: prompt + response is "
                    f"{len(tokens)} tokens; at most {width + 1} fit (raise the row width)"
                )
            full = np.full(width + 1, tokenizer.pad_id, np.int32)
            full[: len(tokens)] = tokens
            p, n = len(prompt), len(response.tokens)
            per_token = {k: np.zeros(width, np.float32) for k in ROW_KEYS[2:8] if k != "positions"}
            per_token["loss_mask"][p - 1 : p - 1 + n] = 1.0
            per_token["ref_log_probs"][p - 1 : p - 1 + n] = response.logp_ref
            if response.r <= 0:
                truth = response.step_truth or [None] * len(response.steps)
                for (a, b, label), true_label in zip(response.steps, truth, strict=True):
                    span = slice(p - 1 + a, p - 1 + b)
                    per_token["step_mask"][span] = float(label)
                    if true_label is not None:
                        per_token["true_step_mask"][span] = float(true_label)
                        per_token["error_step_mask"][span] = float(1 - true_label)
            rows["inputs"].append(full[:-1])
            rows["targets"].append(full[1:])
            rows["positions"].append(np.arange(width, dtype=np.int32))
            for k, v in per_token.items():
                rows[k].append(v)
            rows["rewards"].append(np.float32(response.r))
            rows["baselines"].append(np.float32(r_bar))
            rows["groups"].append(np.int32(g))
    if not rows["inputs"]:
        what = "positive responses" if positives_only else "responses"
        extra = " in groups with mixed rewards" if drop_uniform_groups else ""
        raise ValueError(f"no {what}{extra} among {len(records)} offline records")
    return {k: np.stack(v) for k, v in rows.items()}


def dataset_stats(records: Sequence[OfflineRecord]) -> dict[str, float]:
    """Counts for logs: questions, responses, negatives, labelled negatives, steps, accepted steps, the labels'
    precision against the noise-free truth (when known), mixed groups, mean reward."""
    responses = [r for rec in records for r in rec.responses]
    negatives = [r for r in responses if r.r <= 0]
    labels = [s[2] for r in negatives for s in r.steps]
    pairs = [(s[2], t) for r in negatives if r.step_truth for s, t in zip(r.steps, r.step_truth, strict=True)]
    accepted_true = [t for label, t in pairs if label == 1]
    true_pos = [label for label, t in pairs if t == 1]
    return {
        "questions": len(records),
        "mixed_groups": sum(not rec.uniform for rec in records),
        "responses": len(responses),
        "mean_reward": float(np.mean([r.r for r in responses])) if responses else float("nan"),
        "negatives": len(negatives),
        "labelled_negatives": sum(bool(r.steps) for r in negatives),
        "negative_steps": len(labels),
        "accepted_steps": int(np.sum(labels)) if labels else 0,
        "label_precision": float(np.mean(accepted_true)) if accepted_true else float("nan"),
        "label_recall": float(np.mean(true_pos)) if true_pos else float("nan"),
    }

"""Preference pairs for DPO: built from sampled right and wrong answers, stored as JSONL, laid out as LM-loss rows.

A pair is ``{"prompt", "chosen", "rejected", "ground_truth"}`` (texts; the completions without the prompt). The
file format is one JSON object per line; ``read_pairs`` names the line of a malformed record. ``encode_pairs`` lays
each side out as one right-padded row in the layout of ``stepjax.rl.rollout.training_rows``: ``[BOS] prompt
completion EOS``, ``inputs = tokens[:-1]``, ``targets = tokens[1:]``, mask on the completion's tokens and the EOS.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stepjax.data.sources import MalformedRecordError
from stepjax.objectives.reference_cache import example_key
from stepjax.rl.rollout import PromptIterator

PAIR_FIELDS = ("prompt", "chosen", "rejected", "ground_truth")


def build_pairs(
    records: Sequence[dict],
    completions: Sequence[str],
    scores: Sequence[float] | np.ndarray,
    num_samples: int,
    *,
    seed: int,
    finish_reasons: Sequence[str] | None = None,
    pairs_per_prompt: int = 1,
    threshold: float = 0.5,
) -> list[dict]:
    """Pairs from ``num_samples`` scored completions per prompt (prompt-major rows, as ``collect_rollout`` gives).

    A completion is right when its score is ``>= threshold``. A prompt with ``r`` right and ``w`` wrong completions
    yields ``min(r, w, pairs_per_prompt)`` pairs of distinct completions (chosen right, rejected wrong), drawn with
    ``numpy.random.default_rng([seed, prompt index])`` — the same inputs always give the same pairs. Wrong
    completions that stopped (``finish_reasons == 'stop'``) are used before truncated ones, so a rejected answer is
    a whole answer wherever the sampler gave one. Pairs whose two texts are equal are skipped.

    Returns:
      ``[{"prompt", "chosen", "rejected", "ground_truth"}, ...]`` in prompt order.
    """
    scores = np.asarray(scores, np.float64)
    rows = len(records) * num_samples
    if len(completions) != rows or scores.shape != (rows,):
        raise ValueError(
            f"{len(completions)} completions and {scores.shape} scores for {len(records)} prompts x {num_samples} "
            f"samples; expected {rows} of each"
        )
    if finish_reasons is not None and len(finish_reasons) != rows:
        raise ValueError(f"{len(finish_reasons)} finish reasons for {rows} completions")
    pairs = []
    for i, record in enumerate(records):
        base = i * num_samples
        right = [j for j in range(base, base + num_samples) if scores[j] >= threshold]
        wrong = [j for j in range(base, base + num_samples) if scores[j] < threshold]
        if not right or not wrong:
            continue
        rng = np.random.default_rng([seed, i])
        right = [right[k] for k in rng.permutation(len(right))]
        wrong = [wrong[k] for k in rng.permutation(len(wrong))]
        if finish_reasons is not None:  # stable sort: stopped answers first, shuffled order kept within each kind
            wrong.sort(key=lambda j: finish_reasons[j] != "stop")
        for c, r in zip(right[:pairs_per_prompt], wrong[:pairs_per_prompt], strict=False):
            if completions[c] == completions[r]:
                continue
            pairs.append(
                {
                    "prompt": record["prompt"],
                    "chosen": completions[c],
                    "rejected": completions[r],
                    "ground_truth": str(record.get("ground_truth", "")),
                }
            )
    return pairs


def write_pairs(path: str | os.PathLike, pairs: Sequence[dict]) -> Path:
    """Writes ``pairs`` as JSONL, atomically (a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        for pair in pairs:
            f.write(json.dumps({k: pair[k] for k in PAIR_FIELDS if k in pair}) + "\n")
    os.replace(tmp, path)
    return path


def read_pairs(
    path: str | os.PathLike, *, allow_empty: bool = False, return_lines: bool = False
) -> list[dict] | tuple[list[dict], list[int]]:
    """Reads a pairs JSONL file; blank lines are skipped.

    Each record is an object with string ``prompt`` (non-empty), ``chosen`` and ``rejected`` and an optional
    ``ground_truth`` (string or number, kept as a string). Raises ``MalformedRecordError`` naming the file and line
    of the first bad record, ``FileNotFoundError`` for a missing file, and ``MalformedRecordError`` for a file with
    no pairs.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"preference pairs file {path} does not exist")
    pairs, lines = [], []
    with open(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            pairs.append(_parse_pair(line, f"{path}:{lineno}"))
            lines.append(lineno)
    if not pairs and not allow_empty:
        raise MalformedRecordError(f"{path}: no preference pairs (expected JSON lines with {list(PAIR_FIELDS)})")
    return (pairs, lines) if return_lines else pairs


def _parse_pair(line: str, where: str) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise MalformedRecordError(f"{where}: not valid JSON ({err.msg})") from None
    if not isinstance(record, dict):
        raise MalformedRecordError(f"{where}: expected a JSON object with {list(PAIR_FIELDS)}, got {record!r:.80}")
    pair = {}
    for key in ("prompt", "chosen", "rejected"):
        value = record.get(key)
        # An empty completion is valid (the model stopped at once); an empty prompt is not.
        if not isinstance(value, str) or (key == "prompt" and not value):
            what = "a non-empty string" if key == "prompt" else "a string"
            raise MalformedRecordError(f"{where}: field {key!r} must be {what}, got {value!r:.80}")
        pair[key] = value
    truth = record.get("ground_truth", "")
    if isinstance(truth, bool) or not isinstance(truth, str | int | float):
        raise MalformedRecordError(f"{where}: field 'ground_truth' must be a string or number, got {truth!r:.80}")
    pair["ground_truth"] = str(truth)
    return pair


def pair_length(tokenizer: Any, pair: dict) -> int:
    """Tokens of the longer side's ``[BOS] prompt completion EOS`` (a row of width ``L`` holds ``L + 1``)."""
    prompt = len(tokenizer.encode(pair["prompt"])) + (tokenizer.bos_id is not None)
    return prompt + 1 + max(len(tokenizer.encode(pair["chosen"])), len(tokenizer.encode(pair["rejected"])))


def encode_pairs(
    tokenizer: Any, pairs: Sequence[dict], width: int, *, names: Sequence[str] | None = None
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Tokenises pairs into fixed-width LM-loss rows.

    Args:
      tokenizer: has ``encode``, ``bos_id`` (may be None), ``eos_id``, ``pad_id``.
      pairs: dicts with ``prompt``, ``chosen``, ``rejected``.
      width: row length ``L``; a side of ``[BOS] prompt completion EOS`` longer than ``L + 1`` tokens raises
        ``ValueError`` naming the pair (``names[i]`` when given, e.g. a file line).
    Returns:
      ``(rows, keys)``: ``rows`` holds ``chosen_inputs``, ``chosen_targets``, ``rejected_inputs``,
      ``rejected_targets`` (int32) and ``chosen_mask``, ``rejected_mask`` (float32), each ``[pairs, L]``;
      ``keys[i]`` is ``example_key(prompt ids, chosen ids, rejected ids)`` (for the reference-log-prob cache).
    """
    if tokenizer.eos_id is None:
        raise ValueError(f"{tokenizer!r} has no EOS token: a completion must end with one")
    n = len(pairs)
    rows = {
        f"{side}_{k}": np.full((n, width), tokenizer.pad_id, np.int32) if k != "mask" else np.zeros((n, width), "f4")
        for side in ("chosen", "rejected")
        for k in ("inputs", "targets", "mask")
    }
    prefix = [tokenizer.bos_id] if tokenizer.bos_id is not None else []
    keys = []
    for i, pair in enumerate(pairs):
        prompt = prefix + list(tokenizer.encode(pair["prompt"]))
        sides = {}
        for side in ("chosen", "rejected"):
            completion = [*tokenizer.encode(pair[side]), tokenizer.eos_id]
            tokens = prompt + completion
            if len(tokens) > width + 1:
                name = names[i] if names is not None else f"pair {i}"
                raise ValueError(
                    f"{name}: prompt + {side} completion is {len(tokens)} tokens; at most {width + 1} fit "
                    "(raise the prompt width or max_new_tokens)"
                )
            full = np.full(width + 1, tokenizer.pad_id, np.int32)
            full[: len(tokens)] = tokens
            rows[f"{side}_inputs"][i], rows[f"{side}_targets"][i] = full[:-1], full[1:]
            rows[f"{side}_mask"][i, len(prompt) - 1 : len(tokens) - 1] = 1.0
            sides[side] = completion
        keys.append(example_key(prompt, sides["chosen"], sides["rejected"]))
    return rows, keys


def truncate_at_first_difference(rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``rows`` with both masks cut after the first completion token where chosen and rejected differ.

    The shared prefix cancels in the DPO margin anyway (same tokens, same context); what remains is the one token
    where the answers part (e.g. the first wrong step), as in Step-DPO. The tails after it, continuations of an
    already right or wrong trace, are left out. A pair whose completions never differ keeps its masks.
    """
    out = dict(rows)
    differs = (rows["chosen_targets"] != rows["rejected_targets"]) & (rows["chosen_mask"] > 0)
    first = np.where(differs.any(axis=1), differs.argmax(axis=1), rows["chosen_mask"].shape[1])
    keep = np.arange(rows["chosen_mask"].shape[1])[None, :] <= first[:, None]
    out["chosen_mask"] = rows["chosen_mask"] * keep
    out["rejected_mask"] = rows["rejected_mask"] * keep
    return out


class PairBatches:
    """Endless batches of pair rows (dicts of ``[batch_size, ...]`` arrays) in a seeded order, reshuffled every
    epoch; ``get_state``/``set_state`` make it resumable under ``stepjax.train.run_training``."""

    def __init__(self, rows: dict[str, np.ndarray], batch_size: int, *, seed: int):
        sizes = {k: v.shape[0] for k, v in rows.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"pair rows of different lengths: {sizes}")
        self.rows = rows
        self._order = PromptIterator([{"i": i} for i in range(next(iter(sizes.values())))], batch_size, seed=seed)

    def __iter__(self) -> PairBatches:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        idx = np.array([r["i"] for r in next(self._order)])
        return {k: v[idx] for k, v in self.rows.items()}

    def get_state(self) -> dict[str, int]:
        return self._order.get_state()

    def set_state(self, state: dict[str, int]) -> None:
        self._order.set_state(state)

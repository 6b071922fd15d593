"""Token layout for process reward models: ``[bos] prompt ⊕ step_0 ⊕ sep ⊕ step_1 ⊕ sep ⊕ ...`` (llm-rl.md §5.3).

The label of step ``i`` sits on the last token of the separator that follows it: the PRM reads the hidden state there,
having seen the prompt and steps ``0..i`` (one forward pass scores every step of a solution). Like TRL's
``PRMTrainer`` (``step_separator``), the separator is a string appended after every step, the last one included.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from stepjax.data.tokenizers import Tokenizer


class PRMEncodingError(ValueError):
    """A record does not fit the PRM layout (too long for ``seq_len``, no step, bad labels)."""


def encode_prm_example(
    prompt: str,
    steps: Sequence[str],
    labels: Sequence[int] | None,
    tokenizer: Tokenizer,
    *,
    separator: str = "\n",
    seq_len: int | None,
    add_bos: bool = True,
) -> dict[str, np.ndarray]:
    """One row: ``tokens``, ``labels``, ``step_mask`` (each ``[seq_len]``, right-padded with the pad id / 0; with
    ``seq_len`` None, exactly as long as the example, for ``pack_prm_examples``).

    ``labels`` None: all 0 (for scoring). Raises ``PRMEncodingError`` when the row is longer than ``seq_len``.
    """
    if not steps:
        raise PRMEncodingError("a PRM example needs at least one step")
    if labels is not None and len(labels) != len(steps):
        raise PRMEncodingError(f"{len(labels)} labels for {len(steps)} steps")
    if not separator:
        raise PRMEncodingError("separator must be a non-empty string")
    bos = [tokenizer.bos_id] if add_bos and tokenizer.bos_id is not None else []
    sep = tokenizer.encode(separator)
    ids = bos + tokenizer.encode(prompt)
    positions = []
    for step in steps:
        ids += tokenizer.encode(step) + sep
        positions.append(len(ids) - 1)
    seq_len = len(ids) if seq_len is None else seq_len
    if len(ids) > seq_len:
        raise PRMEncodingError(f"the example has {len(ids)} tokens, more than seq_len={seq_len}")
    tokens = np.full(seq_len, tokenizer.pad_id, np.int32)
    tokens[: len(ids)] = ids
    step_mask = np.zeros(seq_len, np.float32)
    step_mask[positions] = 1.0
    out = np.zeros(seq_len, np.int32)
    if labels is not None:
        if any(int(x) not in (0, 1) for x in labels):
            raise PRMEncodingError(f"labels must be 0 or 1, got {list(labels)}")
        out[positions] = np.asarray(labels, np.int32)
    return {"tokens": tokens, "labels": out, "step_mask": step_mask}


def encode_prm_records(
    records: Sequence[Mapping[str, Any]],
    tokenizer: Tokenizer,
    *,
    separator: str = "\n",
    seq_len: int,
    add_bos: bool = True,
) -> dict[str, np.ndarray]:
    """Stacks ``{"prompt", "steps", "labels"}`` records into ``[num_records, seq_len]`` arrays; a record that does not
    fit raises ``PRMEncodingError`` naming its index."""
    rows = []
    for i, r in enumerate(records):
        try:
            rows.append(
                encode_prm_example(
                    r["prompt"],
                    r["steps"],
                    r.get("labels"),
                    tokenizer,
                    separator=separator,
                    seq_len=seq_len,
                    add_bos=add_bos,
                )
            )
        except PRMEncodingError as e:
            raise PRMEncodingError(f"record {i}: {e}") from None
    if not rows:
        raise PRMEncodingError("no records to encode")
    return {k: np.stack([row[k] for row in rows]) for k in rows[0]}


def pack_prm_examples(
    examples: Sequence[Mapping[str, np.ndarray]], seq_len: int, *, pad_id: int, min_rows: int = 1
) -> tuple[dict[str, np.ndarray], list[tuple[int, int, int]]]:
    """Greedily packs unpadded examples (arrays of the example's own length, as from ``encode_prm_example(...,
    seq_len=None)``: ``tokens``, ``labels``, ``step_mask``; any other per-token keys, e.g. an LM's ``inputs``,
    ``targets``, ``loss_mask``, work too) into rows of ``seq_len`` tokens, in order.

    Returns the packed arrays (``tokens``/``inputs`` padded with ``pad_id``, other keys with 0) plus ``segment_ids``
    (1, 2, ... per row; 0 = padding) and ``positions`` (restarting at 0 in each segment), each ``[rows, seq_len]``
    with ``rows >= min_rows``, and for each example its ``(row, start, length)``.
    """
    if not examples:
        raise PRMEncodingError("no examples to pack")
    keys = list(examples[0])
    rows: list[list[int]] = []  # example indices per row
    used: list[int] = []
    places = []
    for i, ex in enumerate(examples):
        n = len(ex[keys[0]])
        if n > seq_len:
            raise PRMEncodingError(f"example {i} has {n} tokens, more than seq_len={seq_len}")
        if not rows or used[-1] + n > seq_len:
            rows.append([])
            used.append(0)
        places.append((len(rows) - 1, used[-1], n))
        rows[-1].append(i)
        used[-1] += n
    num_rows = max(len(rows), min_rows)
    out = {
        k: np.full((num_rows, seq_len), pad_id if k in ("tokens", "inputs") else 0, np.asarray(examples[0][k]).dtype)
        for k in keys
    }
    out["segment_ids"] = np.zeros((num_rows, seq_len), np.int32)
    out["positions"] = np.zeros((num_rows, seq_len), np.int32)
    for row, members in enumerate(rows):
        for seg, i in enumerate(members, start=1):
            _, start, n = places[i]
            for key in keys:
                out[key][row, start : start + n] = examples[i][key][:n]
            out["segment_ids"][row, start : start + n] = seg
            out["positions"][row, start : start + n] = np.arange(n)
    return out, places


def packed_batches(
    examples: Sequence[Mapping[str, np.ndarray]],
    order: Iterable[int],
    *,
    examples_per_batch: int,
    rows: int,
    seq_len: int,
    pad_id: int,
) -> Iterator[tuple[dict[str, np.ndarray], int]]:
    """Endless fixed-shape ``[rows, seq_len]`` packed batches of ``examples_per_batch`` examples taken in ``order``.

    An example that does not fit in ``rows`` rows is deferred to the next batch (so every batch holds the same
    examples in the same order whatever their lengths, up to such deferrals). Yields ``(batch, examples in it)``.
    """
    order = iter(order)
    pending: list[int] = []
    while True:
        while len(pending) < examples_per_batch:
            pending.append(next(order))
        take, pending = pending[:examples_per_batch], pending[examples_per_batch:]
        packed, places = pack_prm_examples([examples[i] for i in take], seq_len, pad_id=pad_id, min_rows=rows)
        deferred = [i for i, (row, _, _) in zip(take, places, strict=True) if row >= rows]
        pending = deferred + pending
        yield {k: v[:rows] for k, v in packed.items()}, len(take) - len(deferred)


def step_scores_from_row(values: np.ndarray, step_mask: np.ndarray) -> list[float]:
    """The values ``[seq_len]`` at the labelled positions of one row, in order."""
    return [float(v) for v in np.asarray(values)[np.asarray(step_mask) > 0]]

"""Examples and greedy packing into fixed-length rows of the batch contract.

An *example* is a dict ``{"tokens": list[int], "loss_mask": list[int]}`` (equal lengths, plus an optional ``"name"``
used in error messages): ``loss_mask[i] = 1`` when token ``i`` is trained as a *target*. An example of n+1 tokens
fills n row slots: ``inputs = tokens[:-1]``, ``targets = tokens[1:]``, ``loss_mask = loss_mask[1:]``, positions
0..n-1, one segment id. A row of length L holds consecutive examples (next-fit: an example that does not fit
closes the row and opens the next one), segment ids 1..S, padding with segment 0 and loss mask 0.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from stepjax.data.tokenizers import Tokenizer

Example = dict[str, Any]

ROW_KEYS = ("inputs", "targets", "loss_mask", "positions", "segment_ids")
_DTYPES = {
    "inputs": np.int32,
    "targets": np.int32,
    "loss_mask": np.float32,
    "positions": np.int32,
    "segment_ids": np.int32,
}


def sft_example(
    tokenizer: Tokenizer, prompt: str, response: str, *, add_bos: bool = True, add_eos: bool = True
) -> Example:
    """``[BOS] prompt response EOS`` with loss only on the response tokens and the EOS.

    Prompt and response are encoded separately so the boundary is exact (no merge across it). BOS is added when
    the tokenizer has one and ``add_bos``; EOS is required when ``add_eos`` (a model must learn to stop).
    """
    prefix = [tokenizer.bos_id] if add_bos and tokenizer.bos_id is not None else []
    prompt_ids = prefix + tokenizer.encode(prompt)
    response_ids = tokenizer.encode(response)
    if add_eos:
        if tokenizer.eos_id is None:
            raise ValueError(f"sft_example: {tokenizer!r} has no EOS token; pass add_eos=False or set eos_token")
        response_ids = [*response_ids, tokenizer.eos_id]
    return {"tokens": prompt_ids + response_ids, "loss_mask": [0] * len(prompt_ids) + [1] * len(response_ids)}


def lm_example(tokenizer: Tokenizer, text: str, *, add_bos: bool = True, add_eos: bool = True) -> Example:
    """``[BOS] text [EOS]`` with every token after the first trained (plain language modelling)."""
    ids = tokenizer.encode(text)
    if add_bos and tokenizer.bos_id is not None:
        ids = [tokenizer.bos_id, *ids]
    if add_eos and tokenizer.eos_id is not None:
        ids = [*ids, tokenizer.eos_id]
    return {"tokens": ids, "loss_mask": [0] + [1] * (len(ids) - 1)}


def example_name(example: Example) -> str:
    return str(example.get("name", "<unnamed>"))


def fit_example(example: Example, seq_len: int, *, truncate: bool = True) -> Example | None:
    """Checks an example against a row of ``seq_len`` slots.

    Returns the example unchanged if it fits, its first ``seq_len + 1`` tokens if it is longer and ``truncate``,
    None if it has fewer than 2 tokens (nothing to predict); raises ``ValueError`` naming it when it is longer and
    ``truncate=False``, or when tokens and mask lengths differ.
    """
    tokens, mask = example["tokens"], example["loss_mask"]
    if len(tokens) != len(mask):
        raise ValueError(f"example {example_name(example)}: {len(tokens)} tokens but {len(mask)} loss-mask entries")
    if len(tokens) < 2:
        return None
    if len(tokens) - 1 <= seq_len:
        return example
    if not truncate:
        raise ValueError(
            f"example {example_name(example)}: {len(tokens)} tokens need {len(tokens) - 1} slots > seq_len={seq_len}"
            " (pass truncate=True to cut it, or raise seq_len)"
        )
    return {**example, "tokens": list(tokens[: seq_len + 1]), "loss_mask": list(mask[: seq_len + 1])}


class RowBuilder:
    """One row of ``seq_len`` slots being filled with examples (already passed through ``fit_example``)."""

    def __init__(self, seq_len: int):
        self.seq_len = seq_len
        self.arrays = {k: np.zeros((seq_len,), _DTYPES[k]) for k in ROW_KEYS}
        self.used = 0
        self.num_segments = 0

    def fits(self, example: Example) -> bool:
        return len(example["tokens"]) - 1 <= self.seq_len - self.used

    def add(self, example: Example) -> None:
        tokens = np.asarray(example["tokens"], np.int32)
        mask = np.asarray(example["loss_mask"], np.float32)
        n = len(tokens) - 1
        if n > self.seq_len - self.used:
            raise ValueError(f"example {example_name(example)} needs {n} slots, row has {self.seq_len - self.used}")
        span = slice(self.used, self.used + n)
        self.num_segments += 1
        self.arrays["inputs"][span] = tokens[:-1]
        self.arrays["targets"][span] = tokens[1:]
        self.arrays["loss_mask"][span] = mask[1:]
        self.arrays["positions"][span] = np.arange(n, dtype=np.int32)
        self.arrays["segment_ids"][span] = self.num_segments
        self.used += n

    @property
    def empty(self) -> bool:
        return self.num_segments == 0

    def finish(self) -> dict[str, np.ndarray]:
        return self.arrays


def empty_row(seq_len: int) -> dict[str, np.ndarray]:
    """An all-padding row (segment 0, loss mask 0)."""
    return RowBuilder(seq_len).finish()


def pack_examples(
    examples: Iterable[Example], seq_len: int, *, packing: bool = True, truncate: bool = True
) -> list[dict[str, np.ndarray]]:
    """Greedy next-fit packing of a finite example list into rows (each a dict of ``[seq_len]`` arrays).

    ``packing=False`` puts one example per row. Deterministic: the order of examples is kept.
    """
    rows, row = [], RowBuilder(seq_len)
    for example in examples:
        example = fit_example(example, seq_len, truncate=truncate)
        if example is None:
            continue
        if not row.empty and (not packing or not row.fits(example)):
            rows.append(row.finish())
            row = RowBuilder(seq_len)
        row.add(example)
    if not row.empty:
        rows.append(row.finish())
    return rows


def stack_rows(
    rows: list[dict[str, np.ndarray]], batch_size: int | None = None, seq_len: int | None = None
) -> dict[str, np.ndarray]:
    """Stacks rows into a batch ``{key: [B, L]}``; pads with empty rows up to ``batch_size`` when given."""
    rows = list(rows)
    if batch_size is not None:
        if len(rows) > batch_size:
            raise ValueError(f"stack_rows: {len(rows)} rows > batch_size={batch_size}")
        if len(rows) < batch_size:
            length = seq_len if seq_len is not None else len(rows[0]["inputs"])
            rows += [empty_row(length) for _ in range(batch_size - len(rows))]
    return {k: np.stack([r[k] for r in rows]) for k in ROW_KEYS}

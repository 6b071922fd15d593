"""The LM data pipeline: source -> (shard) -> shuffle -> repeat -> to_example -> pack -> batch, resumable.

Record order comes from grain's dataset API (``grain.MapDataset``: index-based, deterministic shuffle reseeded per
epoch). Packing and batching are our own iterator on top, because its state must include the example carried over
from one row to the next: ``get_state()`` = grain's iterator state + that pending example, so restoring the state
taken after k batches yields exactly batches k+1, k+2, ... of the uninterrupted run.

Loading is in-process by default (``worker_count=0``). ``worker_count > 0`` uses grain's ``mp_prefetch``; in grain
0.2.18 that needs absl flags marked parsed (google/grain#1355), which is done here when nothing parsed them yet.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from stepjax.data.packing import Example, RowBuilder, fit_example, lm_example, sft_example, stack_rows
from stepjax.data.tokenizers import Tokenizer

ToExample = Callable[[Any, Tokenizer], Example | None]


def default_to_example(record: Any, tokenizer: Tokenizer) -> Example:
    """Record -> example: ``{"prompt", "response"}`` -> ``sft_example``; ``{"text"}`` or a str -> ``lm_example``."""
    if isinstance(record, str):
        return lm_example(tokenizer, record)
    if isinstance(record, dict):
        if "prompt" in record and "response" in record:
            return sft_example(tokenizer, record["prompt"], record["response"])
        if "text" in record:
            return lm_example(tokenizer, record["text"])
        raise KeyError(f"record has keys {sorted(record)}; expected 'prompt'+'response' or 'text' (or pass to_example)")
    raise TypeError(f"record of type {type(record).__name__}; expected dict or str (or pass to_example)")


def _with_index(index: int, record: Any) -> tuple[int, Any]:
    return index, record


class _ToExample:
    """Picklable map: (source index, record) -> example named by its source index (for error messages)."""

    def __init__(self, tokenizer: Tokenizer, to_example: ToExample):
        self.tokenizer, self.to_example = tokenizer, to_example

    def __call__(self, indexed: tuple[int, Any]) -> Example | None:
        index, record = indexed
        try:
            example = self.to_example(record, self.tokenizer)
        except Exception as e:
            e.add_note(f"while converting source record {index} to an example")
            raise
        if example is None:  # to_example may drop a record
            return None
        return {**example, "name": f"source record {index}"}


def make_example_dataset(
    source,
    tokenizer: Tokenizer,
    *,
    seed: int,
    shuffle: bool = True,
    num_epochs: int | None = None,
    to_example: ToExample = default_to_example,
    shard_index: int = 0,
    shard_count: int = 1,
):
    """The record-level part as a ``grain.MapDataset`` of examples (lazy; index ``i`` = i-th example of the stream).

    Shard ``shard_index`` of ``shard_count`` holds records ``shard_index, shard_index + shard_count, ...`` of the
    source (disjoint, covering); each process builds its own. ``num_epochs=None`` repeats forever.
    """
    import grain

    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index={shard_index} must be in [0, shard_count={shard_count})")
    if num_epochs is not None and num_epochs < 1:
        raise ValueError(f"num_epochs={num_epochs} must be None (forever) or >= 1")
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed={seed} must be in [0, 2**32) (grain's shuffle seed range)")
    ds = grain.MapDataset.source(source).map_with_index(_with_index)
    if shard_count > 1:
        ds = ds[shard_index::shard_count]
    if len(ds) == 0:
        raise ValueError(f"data shard {shard_index}/{shard_count} of a source with {len(source)} records is empty")
    if shuffle:
        ds = ds.shuffle(seed=seed)
    if num_epochs is None or num_epochs > 1:
        ds = ds.repeat(num_epochs)
    return ds.map(_ToExample(tokenizer, to_example))


class LMBatchIterator:
    """Iterator of batch-contract dicts (``inputs``, ``targets``, ``loss_mask``, ``positions``, ``segment_ids``;
    each ``[batch_size, seq_len]``) with ``get_state() -> JSON-able dict`` and ``set_state(dict)``.

    Rows are filled next-fit from the example stream (``packing=False``: one example per row). With finite epochs
    the last batch is padded with empty rows (loss mask 0), then ``StopIteration``.
    """

    def __init__(
        self,
        examples,
        *,
        seq_len: int,
        batch_size: int,
        packing: bool = True,
        truncate: bool = True,
        identity: dict | None = None,
    ):
        """``examples``: an iterable of examples whose iterator has ``get_state``/``set_state`` (a grain
        ``IterDataset``); ``identity``: values saved in the state and checked on restore (seed, shard, ...)."""
        if seq_len < 1 or batch_size < 1:
            raise ValueError(f"seq_len={seq_len} and batch_size={batch_size} must be >= 1")
        self.seq_len, self.batch_size, self.packing, self.truncate = seq_len, batch_size, packing, truncate
        self._identity = dict(identity or {})
        self._examples = examples
        self._it = iter(examples)
        self._pending: Example | None = None
        self._exhausted = False

    def __iter__(self) -> LMBatchIterator:
        return self

    def _pull(self) -> Example | None:
        """Next example that fits a row (truncated if allowed), or None at the end of the stream."""
        while not self._exhausted:
            try:
                example = next(self._it)
            except StopIteration:
                self._exhausted = True
                return None
            example = fit_example(example, self.seq_len, truncate=self.truncate)
            if example is not None:
                return example
        return None

    def _next_row(self):
        row = RowBuilder(self.seq_len)
        if self._pending is not None:
            row.add(self._pending)
            self._pending = None
        while self.packing or row.empty:
            example = self._pull()
            if example is None:
                break
            if not row.fits(example):
                self._pending = example
                break
            row.add(example)
        return None if row.empty else row.finish()

    def __next__(self) -> dict:
        rows = []
        while len(rows) < self.batch_size:
            row = self._next_row()
            if row is None:
                break
            rows.append(row)
        if not rows:
            raise StopIteration
        return stack_rows(rows, self.batch_size, self.seq_len)

    def get_state(self) -> dict:
        pending = None
        if self._pending is not None:
            pending = {
                "tokens": [int(t) for t in self._pending["tokens"]],
                "loss_mask": [int(m) for m in self._pending["loss_mask"]],
                "name": self._pending.get("name", "<unnamed>"),
            }
        return {
            "examples": self._it.get_state(),
            "pending": pending,
            "exhausted": self._exhausted,
            "identity": self._identity,
        }

    def set_state(self, state: dict) -> None:
        saved = state.get("identity", {})
        mismatched = {k: (saved.get(k), v) for k, v in self._identity.items() if k in saved and saved[k] != v}
        if mismatched:
            raise ValueError(
                "data iterator state is from a different data stream; (saved, now) per key: "
                + ", ".join(f"{k}={a!r} vs {b!r}" for k, (a, b) in mismatched.items())
            )
        self._close_upstream()
        self._it = iter(self._examples)
        self._it.set_state(state["examples"])
        pending = state["pending"]
        # Re-fit: the state may come from a run with a longer seq_len.
        self._pending = None if pending is None else fit_example(dict(pending), self.seq_len, truncate=self.truncate)
        self._exhausted = bool(state["exhausted"])

    def _close_upstream(self) -> None:
        close = getattr(self._it, "close", None)
        if close is not None:
            close()

    def close(self) -> None:
        """Stops grain's prefetch threads/worker processes (also done on interpreter exit, more noisily)."""
        self._close_upstream()
        self._it = _Closed()

    def __enter__(self) -> LMBatchIterator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Closed:
    def __next__(self):
        raise RuntimeError("this data iterator was closed")

    def get_state(self):
        raise RuntimeError("this data iterator was closed")


def _ensure_absl_flags_parsed() -> None:
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def make_lm_pipeline(
    source,
    tokenizer: Tokenizer,
    *,
    seq_len: int,
    batch_size: int,
    seed: int,
    shuffle: bool = True,
    num_epochs: int | None = None,
    packing: bool = True,
    to_example: ToExample = default_to_example,
    truncate: bool = True,
    shard_index: int = 0,
    shard_count: int = 1,
    num_threads: int = 0,
    worker_count: int = 0,
) -> LMBatchIterator:
    """Builds the resumable LM batch iterator over ``source`` (any ``__len__``/``__getitem__`` of records).

    Args:
      source: records (see ``stepjax.data.sources``); ``to_example(record, tokenizer)`` turns one into
        ``{"tokens", "loss_mask"}`` (or None to drop it). The default handles prompt/response and text records.
      seq_len, batch_size: every batch is ``[batch_size, seq_len]``.
      seed: shuffle seed in [0, 2**32); same seed -> same order; each epoch is reshuffled.
      num_epochs: None repeats forever; n stops after n passes (last batch padded).
      packing: several examples per row (next-fit) or one per row.
      truncate: cut examples longer than a row (else raise naming the source record).
      shard_index, shard_count: this process reads records ``shard_index::shard_count`` of the source.
      num_threads: grain read threads in this process (0 = read inline; deterministic either way).
      worker_count: grain worker processes (``mp_prefetch``); 0 keeps loading in-process.
    """
    import grain

    examples = make_example_dataset(
        source,
        tokenizer,
        seed=seed,
        shuffle=shuffle,
        num_epochs=num_epochs,
        to_example=to_example,
        shard_index=shard_index,
        shard_count=shard_count,
    )
    read_options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=max(1, 4 * num_threads))
    iter_ds = examples.to_iter_dataset(read_options)
    if worker_count > 0:
        _ensure_absl_flags_parsed()
        iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    identity = {
        "seed": seed,
        "shuffle": shuffle,
        "num_epochs": num_epochs,
        "shard_index": shard_index,
        "shard_count": shard_count,
        "source_len": len(source),
        "worker_count": worker_count,
    }
    return LMBatchIterator(
        iter_ds, seq_len=seq_len, batch_size=batch_size, packing=packing, truncate=truncate, identity=identity
    )

"""Random-access record sources (grain ``RandomAccessDataSource`` protocol: ``__len__`` + ``__getitem__``).

Records are plain Python objects, usually JSON dicts. Three storage forms:
- ``InMemorySource``: a list held in memory (generated tasks, tests).
- ``JsonlSource``: one JSON value per line; line offsets are indexed once, records are read lazily with ``os.pread``
  (thread-safe, so grain's read threads can share one source).
- ``ArrayRecordSource``: ArrayRecord files whose records are UTF-8 JSON bytes, read through
  ``grain.sources.ArrayRecordDataSource``; ``write_array_record`` writes such files.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np


class MalformedRecordError(ValueError):
    """A stored record could not be decoded; the message names the file and line (or record index)."""


class InMemorySource:
    """A list of records in memory. ``source[i]`` returns record ``i`` (no copy)."""

    def __init__(self, records: Iterable[Any]):
        self._records = list(records)

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> Any:
        return self._records[index]

    def __repr__(self) -> str:
        return f"InMemorySource(len={len(self)})"


class JsonlSource:
    """JSON Lines file: one JSON value per non-blank line, read lazily.

    Construction scans the file once for line offsets (blank lines are skipped and do not count as records, but
    line numbers in errors are the file's own 1-based line numbers). ``validate=True`` also parses every line now,
    so a malformed line fails at construction instead of mid-training.
    """

    def __init__(self, path: str | os.PathLike, *, validate: bool = False):
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"JSONL source: no such file: {self.path!r}")
        offsets, lengths, line_numbers = [], [], []
        with open(self.path, "rb") as f:
            offset = 0
            for line_number, line in enumerate(f, start=1):
                if line.strip():
                    offsets.append(offset)
                    lengths.append(len(line))
                    line_numbers.append(line_number)
                offset += len(line)
        self._offsets = np.asarray(offsets, dtype=np.int64)
        self._lengths = np.asarray(lengths, dtype=np.int64)
        self._line_numbers = np.asarray(line_numbers, dtype=np.int64)
        self._fd: int | None = None
        if validate:
            for i in range(len(self)):
                self[i]

    def __len__(self) -> int:
        return len(self._offsets)

    def _file(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        return self._fd

    def __getitem__(self, index: int) -> Any:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"JSONL source {self.path!r}: record {index} out of range [0, {len(self)})")
        raw = os.pread(self._file(), int(self._lengths[index]), int(self._offsets[index]))
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise MalformedRecordError(
                f"{self.path}:{int(self._line_numbers[index])}: malformed JSON line (record {index}): {e}"
            ) from None

    # The open file descriptor is per process: drop it when pickled (grain worker processes reopen lazily).
    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None}

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)

    def __repr__(self) -> str:
        return f"JsonlSource({self.path!r}, len={len(self)})"


class ArrayRecordSource:
    """ArrayRecord file(s) of UTF-8 JSON records, read with ``grain.sources.ArrayRecordDataSource``.

    Record ``i`` runs over the files in the given order. Missing files raise ``FileNotFoundError`` here, before
    ArrayRecord's own (less specific) error.
    """

    def __init__(self, paths: str | os.PathLike | Sequence[str | os.PathLike]):
        import grain

        paths = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
        self.paths = [os.fspath(p) for p in paths]
        if not self.paths:
            raise ValueError("ArrayRecord source: no paths given")
        for p in self.paths:
            if not os.path.isfile(p):
                raise FileNotFoundError(f"ArrayRecord source: no such file: {p!r}")
        self._source = grain.sources.ArrayRecordDataSource(self.paths)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> Any:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"ArrayRecord source {self.paths}: record {index} out of range [0, {len(self)})")
        raw = self._source[index]
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise MalformedRecordError(f"ArrayRecord source {self.paths}: record {index} is not JSON: {e}") from None

    def __repr__(self) -> str:
        return f"ArrayRecordSource({self.paths}, len={len(self)})"


def write_array_record(path: str | os.PathLike, records: Iterable[Any]) -> int:
    """Writes ``records`` (JSON-serialisable) to one ArrayRecord file, one record per group. Returns the count."""
    from array_record.python.array_record_module import ArrayRecordWriter

    # group_size:1 keeps random access cheap (each read decodes one record, not a whole group).
    writer = ArrayRecordWriter(os.fspath(path), "group_size:1")
    count = 0
    try:
        for record in records:
            writer.write(json.dumps(record, ensure_ascii=False).encode("utf-8"))
            count += 1
    finally:
        writer.close()
    return count


def write_jsonl(path: str | os.PathLike, records: Iterable[Any]) -> int:
    """Writes ``records`` as JSON Lines (UTF-8). Returns the count."""
    count = 0
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count


def open_source(path: str | os.PathLike | Sequence[str | os.PathLike]) -> JsonlSource | ArrayRecordSource:
    """Opens a file source by extension: ``.jsonl``/``.json`` -> ``JsonlSource``; ``.array_record``/``.arecord``
    (or a list of them) -> ``ArrayRecordSource``."""
    if not isinstance(path, str | os.PathLike):
        return ArrayRecordSource(path)
    p = os.fspath(path)
    if p.endswith((".jsonl", ".json")):
        return JsonlSource(p)
    if p.endswith((".array_record", ".arecord")) or "array_record" in os.path.basename(p):
        return ArrayRecordSource(p)
    raise ValueError(f"open_source: cannot tell the format of {p!r} (expected .jsonl or .array_record)")

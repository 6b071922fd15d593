"""Reference log-probs computed once and cached on disk (TRL's ``precompute_ref_log_probs``).

A DPO run scores every preference pair under the frozen reference model once; the per-sequence sums are stored in a
``.npz`` keyed by an example hash, and later epochs (or runs) read them instead of running the reference model. The
file holds ``keys`` (str), ``chosen`` and ``rejected`` (float64 sums) and ``meta`` (a JSON string, e.g. the reference
checkpoint and ``ld_alpha``) that a reader can require to match.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def example_key(*token_arrays: Sequence[int] | np.ndarray) -> str:
    """A stable key for one example from its token arrays (e.g. prompt, chosen, rejected ids)."""
    digest = hashlib.sha256()
    for tokens in token_arrays:
        arr = np.asarray(tokens, dtype=np.int64).reshape(-1)
        digest.update(np.int64(arr.size).tobytes())  # length prefix: ([1, 2], [3]) != ([1], [2, 3])
        digest.update(arr.tobytes())
    return digest.hexdigest()[:32]


class ReferenceCache:
    """``{key: (chosen sum, rejected sum)}`` with save/load to one ``.npz`` file."""

    def __init__(self, meta: Mapping[str, Any] | None = None):
        self.meta = dict(meta or {})
        self._values: dict[str, tuple[float, float]] = {}

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, key: str) -> bool:
        return key in self._values

    def put(self, keys: Sequence[str], chosen: Sequence[float], rejected: Sequence[float]) -> None:
        chosen, rejected = np.asarray(chosen, np.float64), np.asarray(rejected, np.float64)
        if not len(keys) == chosen.shape[0] == rejected.shape[0]:
            raise ValueError(f"{len(keys)} keys but {chosen.shape[0]} chosen and {rejected.shape[0]} rejected values")
        bad = [k for k, c, r in zip(keys, chosen, rejected, strict=True) if not (np.isfinite(c) and np.isfinite(r))]
        if bad:
            raise ValueError(f"non-finite reference log-probs for {len(bad)} examples, e.g. key {bad[0]!r}")
        for key, c, r in zip(keys, chosen, rejected, strict=True):
            self._values[str(key)] = (float(c), float(r))

    def missing(self, keys: Sequence[str]) -> list[str]:
        return [k for k in keys if k not in self._values]

    def get(self, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(chosen [n], rejected [n])`` float32 for ``keys``; a ``KeyError`` names the missing ones."""
        if missing := self.missing(keys):
            raise KeyError(
                f"{len(missing)} of {len(keys)} examples have no cached reference log-probs, e.g. {missing[0]!r}"
            )
        pairs = np.array([self._values[k] for k in keys], np.float64).reshape(-1, 2)
        return pairs[:, 0].astype(np.float32), pairs[:, 1].astype(np.float32)

    def save(self, path: str | os.PathLike) -> Path:
        """Writes the cache atomically (a temporary file renamed into place)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        keys = list(self._values)
        values = np.array([self._values[k] for k in keys], np.float64).reshape(-1, 2)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(
                f,
                keys=np.array(keys, dtype=str),
                chosen=values[:, 0],
                rejected=values[:, 1],
                meta=np.array(json.dumps(self.meta, sort_keys=True)),
            )
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, expect_meta: Mapping[str, Any] | None = None) -> ReferenceCache:
        """Reads a cache; ``expect_meta`` fields must equal the stored ones (a cache of another reference model or
        another ``ld_alpha`` is refused, naming the field)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"reference log-prob cache {path} does not exist")
        try:
            with np.load(path, allow_pickle=False) as data:
                keys, chosen, rejected = data["keys"], data["chosen"], data["rejected"]
                meta = json.loads(str(data["meta"]))
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(f"reference log-prob cache {path} is unreadable: {err}") from err
        for field, want in (expect_meta or {}).items():
            if meta.get(field) != want:
                raise ValueError(
                    f"reference log-prob cache {path} was made with {field}={meta.get(field)!r}, expected {want!r}"
                )
        cache = cls(meta)
        cache.put([str(k) for k in keys], chosen, rejected)
        return cache


def cached_reference_log_probs(
    path: str | os.PathLike,
    keys: Sequence[str],
    compute: Callable[[Sequence[int]], tuple[np.ndarray, np.ndarray]],
    *,
    meta: Mapping[str, Any] | None = None,
    batch_size: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """Reference sums for ``keys``, computing (and caching) only the ones not yet on disk.

    Args:
      path: the ``.npz`` cache (created if missing).
      keys: one key per example (``example_key``).
      compute: ``compute(indices) -> (chosen [n], rejected [n])`` for the examples at those positions of ``keys``
        (a jitted reference forward over one batch).
      meta: stored with the cache and required to match when it is reloaded.
      batch_size: examples per ``compute`` call.
    Returns:
      ``(chosen [len(keys)], rejected [len(keys)])`` float32.
    """
    cache = ReferenceCache.load(path, expect_meta=meta) if Path(path).is_file() else ReferenceCache(meta)
    todo = sorted({i for i, k in enumerate(keys) if k not in cache})
    for start in range(0, len(todo), batch_size):
        indices = todo[start : start + batch_size]
        chosen, rejected = compute(indices)
        cache.put([keys[i] for i in indices], np.asarray(chosen), np.asarray(rejected))
    if todo:
        cache.save(path)
    return cache.get(keys)

"""Finished-row callbacks: host functions called from inside the jitted decode loop.

The loop passes a small integer id instead of the Python function, so one compiled loop serves every callback
(a function as a static argument would recompile per function object). ``register`` hands out ids; the loop's
``io_callback`` calls ``dispatch``, which looks the function up and calls it once per newly finished row.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
from collections.abc import Callable

import numpy as np


@dataclasses.dataclass(frozen=True)
class FinishedRow:
    """One completed row, as the callback receives it.

    Attributes:
      row: index in the output (``prompt_index * num_samples + sample_index``).
      prompt_index, sample_index: which prompt, which of its samples.
      tokens: ``[length]`` int32 generated ids (prompt excluded, stop token included).
      logprobs: ``[length]`` float32 log-probs of those tokens under the raw model distribution.
      finish_reason: ``FINISH_STOP`` or ``FINISH_LENGTH`` (``stepjax.sampling.config``).
    """

    row: int
    prompt_index: int
    sample_index: int
    tokens: np.ndarray
    logprobs: np.ndarray
    finish_reason: int


RowCallback = Callable[[FinishedRow], None]

_lock = threading.Lock()
_ids = itertools.count(1)
_registry: dict[int, tuple[RowCallback, int]] = {}


def register(callback: RowCallback, num_samples: int) -> int:
    """Makes ``callback`` reachable from the loop; returns its id. Call ``unregister(id)`` when done."""
    with _lock:
        key = next(_ids)
        _registry[key] = (callback, num_samples)
    return key


def unregister(key: int) -> None:
    with _lock:
        _registry.pop(key, None)


def dispatch(
    key: np.ndarray,
    newly_done: np.ndarray,
    tokens: np.ndarray,
    lengths: np.ndarray,
    logprobs: np.ndarray,
    reasons: np.ndarray,
) -> None:
    """Host side of the loop's ``io_callback``: calls the registered function for each row in ``newly_done``."""
    with _lock:
        entry = _registry.get(int(key))
    if entry is None:
        return
    callback, n = entry
    for row in np.flatnonzero(np.asarray(newly_done)):
        length = int(lengths[row])
        callback(
            FinishedRow(
                row=int(row),
                prompt_index=int(row) // n,
                sample_index=int(row) % n,
                tokens=np.array(tokens[row, :length], np.int32),
                logprobs=np.array(logprobs[row, :length], np.float32),
                finish_reason=int(reasons[row]),
            )
        )

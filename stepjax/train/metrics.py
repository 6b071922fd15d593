"""Metric logging: one JSON object per logged step in ``workdir/metrics.jsonl`` and TensorBoard event files.

Only the main process writes (every process may call ``write``; the others do nothing). Lines are flushed as they
are written so a killed run keeps everything it logged. On resume, lines of steps after the resumed step (logged by
the interrupted run after its last checkpoint, about to be re-run) are dropped, and TensorBoard is told to purge
them, so each step appears once. Non-finite values are written as JSON ``null`` (the file stays strict JSON).
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def _to_float(v: Any) -> float | None:
    x = float(np.asarray(v))
    return x if math.isfinite(x) else None


def _summary_writer_cls() -> type:
    """tensorboardX's ``SummaryWriter``, imported without torch.

    tensorboardX imports torch at module level when it is installed (~4 s on a CPU machine); scalars never need it,
    so unless torch is already loaded, its import is blocked for that moment (tensorboardX catches the ImportError).
    """
    if "tensorboardX" in sys.modules or "torch" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        from tensorboardX import SummaryWriter
    finally:
        if "torch" in sys.modules and sys.modules["torch"] is None:
            del sys.modules["torch"]
    return SummaryWriter


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl`` file, in file order."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _truncate_after(path: Path, step: int) -> int:
    """Drops records with ``step > step`` (atomically: write a copy, then rename). Returns how many were dropped."""
    records = read_metrics(path)
    kept = [r for r in records if int(r.get("step", 0)) <= step]
    if len(kept) == len(records):
        return 0
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in kept)
    os.replace(tmp, path)
    return len(records) - len(kept)


class MetricWriter:
    """Writes scalar metrics to ``workdir/metrics.jsonl`` and to TensorBoard under ``workdir/tensorboard``.

    Args:
      workdir: the run folder (created if missing).
      resume_step: the step a resumed run restarts from; records of later steps are dropped (see module doc).
      tensorboard: also write TensorBoard event files (tensorboardX).
      is_main: override of ``jax.process_index() == 0``.
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        *,
        resume_step: int | None = None,
        tensorboard: bool = True,
        is_main: bool | None = None,
    ):
        self.workdir = Path(workdir)
        self.path = self.workdir / METRICS_FILE
        self.is_main = jax.process_index() == 0 if is_main is None else is_main
        self.dropped = 0
        self._file = None
        self._tb = None
        if not self.is_main:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            self.dropped = _truncate_after(self.path, resume_step)
        self._file = open(self.path, "a")  # noqa: SIM115 - kept open for the run, closed in close()
        if tensorboard:
            SummaryWriter = _summary_writer_cls()
            # purge_step hides events of steps >= purge_step left in older event files by an interrupted run.
            purge = None if resume_step is None else resume_step + 1
            self._tb = SummaryWriter(str(self.workdir / TENSORBOARD_DIR), purge_step=purge)

    def write(self, step: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """Logs ``{name: scalar}`` at ``step`` (values may be device arrays; they are fetched). Returns the record."""
        record: dict[str, Any] = {"step": int(step)}
        record.update({k: _to_float(v) for k, v in metrics.items()})
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        if self._tb is not None:
            for k, v in record.items():
                if k != "step":
                    self._tb.add_scalar(k, float("nan") if v is None else v, int(step))
        return record

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        """Flushes and closes both sinks (idempotent)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> MetricWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_scalars(records: list[dict[str, Any]], key: str) -> Iterator[tuple[int, float]]:
    """``(step, value)`` for records that hold a finite ``key``."""
    for r in records:
        v = r.get(key)
        if v is not None:
            yield int(r["step"]), float(v)

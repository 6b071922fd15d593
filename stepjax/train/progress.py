"""Console progress: a tqdm bar on a terminal, one plain line per logged step otherwise (CI logs stay readable).

The bar shows step / total, steps/s, ETA and, in its postfix, the latest loss and tokens/s. Rates are measured on
the host between calls of ``log`` (steps already synced there), after the first step (which includes compilation).
Only the main process prints.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

import jax


def _fmt_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def _fmt_count(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.1f}{unit}"
    return f"{x:.1f}"


class Progress:
    """Progress of a run from ``initial`` to ``total`` steps.

    Args:
      total: last step of the run.
      initial: step the run starts at (a resumed run's restored step).
      tokens_per_step: tokens in one global batch; enables tokens/s.
      stream: where to print (stderr by default).
      bar: force the tqdm bar on/off; default: on when ``stream`` is a TTY.
      enabled: override of "main process only".
    """

    def __init__(
        self,
        total: int,
        *,
        initial: int = 0,
        tokens_per_step: int | None = None,
        stream: TextIO | None = None,
        bar: bool | None = None,
        enabled: bool | None = None,
    ):
        self.total, self.step = int(total), int(initial)
        self.tokens_per_step = tokens_per_step
        self.stream = stream or sys.stderr
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        use_bar = self.enabled and (bar if bar is not None else bool(getattr(self.stream, "isatty", lambda: False)()))
        self._bar = None
        if use_bar:
            from tqdm import tqdm

            self._bar = tqdm(
                total=self.total, initial=self.step, file=self.stream, unit="step", dynamic_ncols=True, smoothing=0.1
            )
        self._mark: tuple[int, float] | None = None  # (step, time) where rate measurement starts

    def start_clock(self, step: int) -> None:
        """Rates are measured from here (call after the first, compiling, step has finished)."""
        self._mark = (int(step), time.perf_counter())

    def advance(self, step: int) -> None:
        """Called every step (cheap: no device sync)."""
        if self._bar is not None and step > self.step:
            self._bar.update(step - self.step)
        self.step = int(step)

    def rates(self, step: int) -> dict[str, float]:
        """``perf/steps_per_sec`` (and ``perf/tokens_per_sec``) since the clock mark; resets the mark."""
        if self._mark is None or step <= self._mark[0]:
            return {}
        now = time.perf_counter()
        sps = (step - self._mark[0]) / max(now - self._mark[1], 1e-9)
        self._mark = (int(step), now)
        out = {"perf/steps_per_sec": sps}
        if self.tokens_per_step:
            out["perf/tokens_per_sec"] = sps * self.tokens_per_step
        return out

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """Shows the latest metrics: bar postfix on a TTY, one line otherwise."""
        if not self.enabled:
            return
        loss = metrics.get("loss")
        sps = metrics.get("perf/steps_per_sec")
        tps = metrics.get("perf/tokens_per_sec")
        if self._bar is not None:
            post = {}
            if loss is not None:
                post["loss"] = f"{loss:.4f}"
            if tps is not None:
                post["tok/s"] = _fmt_count(tps)
            self._bar.set_postfix(post, refresh=False)
            self.advance(step)
            return
        parts = [f"step {step}/{self.total}"]
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        if sps is not None:
            parts.append(f"{sps:.2f} steps/s")
            if tps is not None:
                parts.append(f"{_fmt_count(tps)} tok/s")
            parts.append(f"eta {_fmt_duration((self.total - step) / max(sps, 1e-9))}")
        print(" | ".join(parts), file=self.stream, flush=True)

    def message(self, text: str) -> None:
        """Prints a line without breaking the bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

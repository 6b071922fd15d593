"""Timing helpers shared by the benchmarks: warm-up + medians, interleaved peers, the machine's matmul peak, output.

The development machines are small and shared, so every figure is a median over several runs taken after warm-up,
and peers are timed in alternation (``interleaved``) so that background load hits both sides alike.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def median(values: Sequence[float]) -> float:
    """Median of a non-empty sequence (mean of the two middle values for an even count)."""
    if not values:
        raise ValueError("median of an empty sequence")
    return float(statistics.median(values))


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator`` (e.g. peer time over our time: > 1 means we are faster)."""
    if denominator <= 0 or not math.isfinite(denominator):
        raise ValueError(f"ratio needs a positive finite denominator, got {denominator}")
    return numerator / denominator


def time_calls(fn: Callable[[], Any], *, warmup: int = 1, repeats: int = 5) -> list[float]:
    """Seconds per call of ``fn`` (which must block until its work is done), after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def interleaved(fns: Mapping[str, Callable[[], Any]], *, warmup: int = 1, rounds: int = 5) -> dict[str, list[float]]:
    """Times several blocking callables in alternation: ``rounds`` rounds of one call each, after ``warmup``
    untimed rounds. Returns ``{name: [seconds per call]}``. Alternating keeps slow drifts of a shared machine's
    load from favouring whichever side happened to run in the quiet minute."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(rounds):
        # Swap the order every round so neither side always runs right after the other's cache-trashing step.
        order = list(fns.items()) if r % 2 == 0 else list(fns.items())[::-1]
        for name, fn in order:
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def matmul_peak_flops(n: int = 2048, repeats: int = 10) -> float:
    """The machine's float32 matmul rate in FLOP/s: the best of ``repeats`` jitted ``jnp.dot`` of two ``[n, n]``
    matrices (``2 n^3`` FLOPs each). The best rather than the median: a peak is what the hardware can do."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    times = time_calls(lambda: dot(a, b).block_until_ready(), warmup=2, repeats=repeats)
    return 2.0 * n**3 / min(times)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table with columns padded to their widest cell; floats printed with 4 significant digits."""

    def cell(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def result_line(name: str, value: float, unit: str) -> str:
    """The machine-readable last line of every benchmark: ``RESULT <name> <value> <unit>``."""
    if not name or any(c.isspace() for c in name + unit):
        raise ValueError(f"RESULT name and unit must be non-empty single words, got {name!r} {unit!r}")
    return f"RESULT {name} {value:.3g} {unit}"

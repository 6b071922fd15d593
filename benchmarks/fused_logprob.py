"""Fused (vocabulary-chunked) log-prob vs the naive one: peak memory and time of forward + backward.

Run: ``python -m benchmarks.fused_logprob`` (a few minutes on a 2-core machine). Options: ``--tokens``, ``--dim``,
``--vocabs``, ``--chunk``, ``--rounds``, ``--warmup``.

What is compared (float32, same inputs): ``value_and_grad`` of the token-mean log-prob with respect to ``hidden
[tokens, dim]`` and ``weight [dim, vocab]``, through ``stepjax.kernels.fused_logprob`` with
  * ``naive``: ``fused_logprob_reference`` (materialises the ``[tokens, vocab]`` logits, autodiff backward);
  * ``chunked``: ``fused_logprob_chunked`` (``lax.scan`` over vocabulary chunks, recomputing backward);
  * ``pallas``: ``fused_logprob_pallas``, only where a GPU is present (interpret mode on CPU is for tests).
Before timing, every side's loss and gradients must match the naive side's (max abs 1e-4 relative to the largest
value). Memory: XLA's compiled ``memory_analysis().temp_size_in_bytes`` (scratch beyond arguments and outputs), and
the measured growth of the process's resident memory while one call runs (sampled every millisecond from
``/proc/self/statm``; CPU only, large buffers are mmapped and given back when freed). The RESULT line is the
naive/chunked ratio of compiled temp memory at the largest vocabulary.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections.abc import Callable

from benchmarks.common import format_table, interleaved, median, ratio, result_line

MiB = 2**20


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_growth(fn: Callable[[], object]) -> float:
    """Bytes by which resident memory rose above its starting level while ``fn()`` ran (sampled each ~1 ms)."""
    if not os.path.exists("/proc/self/statm"):
        return float("nan")
    start = _rss_bytes()
    peak = [start]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.001)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        fn()
    finally:
        done.set()
        thread.join()
    return float(max(peak[0], _rss_bytes()) - start)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--vocabs", default="32000,150000", help="comma-separated vocabulary sizes")
    p.add_argument("--chunk", type=int, default=4096, help="vocabulary chunk of the chunked version")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    return p.parse_args(argv)


def measure_vocab(vocab: int, args: argparse.Namespace, impls: dict[str, Callable]) -> tuple[list[tuple], float]:
    """Table rows for one vocabulary size, and the naive/chunked ratio of compiled temp memory."""
    import jax
    import jax.numpy as jnp

    kh, kw, kt = jax.random.split(jax.random.key(vocab), 3)
    hidden = jax.random.normal(kh, (args.tokens, args.dim), jnp.float32)
    weight = jax.random.normal(kw, (args.dim, vocab), jnp.float32) * args.dim**-0.5
    targets = jax.random.randint(kt, (args.tokens,), 0, vocab)
    compiled, temps, compile_s, results, growth = {}, {}, {}, {}, {}
    for name, fn in impls.items():

        def loss(h, w, fn=fn):
            return jnp.mean(fn(h, w, targets))

        start = time.perf_counter()
        compiled[name] = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(hidden, weight).compile()
        compile_s[name] = time.perf_counter() - start
        temps[name] = compiled[name].memory_analysis().temp_size_in_bytes

    def run(name):
        return jax.block_until_ready(compiled[name](hidden, weight))

    for name in compiled:
        # The first call after compilation: nothing of this side's buffers is resident yet.
        growth[name] = peak_rss_growth(lambda name=name: results.update({name: run(name)}))
    ref_loss, (ref_dh, ref_dw) = results["naive"]
    scale = max(float(jnp.max(jnp.abs(ref_dw))), float(jnp.max(jnp.abs(ref_dh))), abs(float(ref_loss)))
    for name, (value, (dh, dw)) in results.items():
        err = max(
            float(jnp.max(jnp.abs(dh - ref_dh))), float(jnp.max(jnp.abs(dw - ref_dw))), abs(float(value - ref_loss))
        )
        print(f"vocab {vocab}: {name} vs naive, max abs diff of loss and gradients {err:.2e}", flush=True)
        if not err <= 1e-4 * scale:
            raise SystemExit(f"error: {name} disagrees with naive at vocab {vocab}: max abs diff {err:.3g}")
    times = interleaved({n: (lambda n=n: run(n)) for n in compiled}, warmup=args.warmup, rounds=args.rounds)
    flops = 6.0 * args.tokens * args.dim * vocab  # forward + backward matmuls of the naive version
    rows = []
    for name in compiled:
        t = median(times[name])
        rows.append(
            (
                vocab,
                name,
                compile_s[name],
                t,
                flops / t / 1e9,
                temps[name] / MiB,
                growth[name] / MiB,
                ratio(temps["naive"], max(temps[name], 1)),
            )
        )
    return rows, ratio(temps["naive"], max(temps["chunked"], 1))


def main(argv: list[str] | None = None) -> float:
    args = _parse(argv)
    import jax

    from stepjax.kernels._common import accelerator_backend
    from stepjax.kernels.fused_logprob import fused_logprob_chunked, fused_logprob_pallas, fused_logprob_reference

    impls = {
        "naive": fused_logprob_reference,
        "chunked": lambda h, w, t: fused_logprob_chunked(h, w, t, chunk_size=args.chunk),
    }
    if accelerator_backend() == "gpu":
        impls["pallas"] = fused_logprob_pallas
    print(
        f"jax {jax.__version__} ({jax.devices()[0].platform}), tokens {args.tokens}, dim {args.dim}, float32, "
        f"chunk {args.chunk}, load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    vocabs = [int(v) for v in args.vocabs.split(",")]
    rows, temp_ratio = [], float("nan")
    for vocab in vocabs:
        vocab_rows, temp_ratio = measure_vocab(vocab, args, impls)
        rows += vocab_rows
    headers = ["vocab", "impl", "compile s", "median s", "GFLOP/s (6NdV)", "XLA temp MiB", "RSS growth MiB"]
    print()
    print(format_table([*headers, "naive/impl temp"], rows))
    print(
        "RSS growth includes the gradients (outputs: tokens x dim + dim x vocab float32). Logits alone: "
        + ", ".join(f"{args.tokens * v * 4 / MiB:.0f} MiB at vocab {v}" for v in vocabs)
        + f"; one [tokens, chunk] float32 buffer: {args.tokens * args.chunk * 4 / MiB:.0f} MiB."
    )
    label = f"{vocabs[-1] // 1000}k" if vocabs[-1] >= 1000 else str(vocabs[-1])
    print(result_line(f"fused_logprob_mem_{label}", temp_ratio, "x"))
    return temp_ratio


if __name__ == "__main__":
    main()

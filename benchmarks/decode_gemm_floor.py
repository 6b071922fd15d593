"""The matmul floor of batched greedy decoding: a decode step reduced to its weight matmuls, per library.

Run: ``python -m benchmarks.decode_gemm_floor`` (about a minute). Options: ``--preset``, ``--batch``, ``--steps``,
``--rounds``.

A decode step at batch ``b`` multiplies a ``[b, hidden]`` activation by every weight matrix of the model once: per
layer the q, k, v and output projections and the three SwiGLU matrices, then the ``[hidden, vocab]`` head. The
skeleton here does exactly those products, chained so that each depends on the previous one (plus a residual add,
the SwiGLU product and a feedback of the logits into the next step's input; no attention, norms or sampling), for
``--steps`` steps over the model's full set of distinct weights — so, as in real decoding, the weights stream from
memory every step instead of sitting in cache. It runs as one ``jax.jit`` (a ``fori_loop``, XLA), as a Python loop
of ``torch.matmul`` (all CPU threads, ``inference_mode``) and of NumPy ``@`` (its BLAS). Median of ``--rounds`` runs
per library; one library after the other, because torch's and OpenBLAS's worker threads keep spinning after each
call and would slow a library timed right after them.

Why this exists: the decode benchmark's goal (3x Hugging Face ``generate`` at batch 8) needs a step of at most a
third of HF's. A decode step cannot be faster than its matmuls, so the skeleton's time per step is a floor: where it
is above that budget the goal cannot be met with the library's matmuls on this machine.
Last line: ``RESULT decode_gemm_floor_b<b>_ms <XLA ms per step>``.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from benchmarks.common import format_table, median, result_line, time_calls


def layer_shapes(cfg) -> dict[str, tuple[int, int]]:
    """``{name: (d_in, d_out)}`` of one decoder layer's weight matrices."""
    d, q, kv = cfg.hidden_size, cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    return {"q": (d, q), "k": (d, kv), "v": (d, kv), "o": (q, d), "gate": (d, cfg.mlp_dim), "up": (d, cfg.mlp_dim),
            "down": (cfg.mlp_dim, d)}  # fmt: skip


def random_weights(cfg, seed: int = 0) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    """Per-layer weight dicts and the head, float32, scaled so activations stay O(1) through the chain."""
    rng = np.random.default_rng(seed)

    def mat(d_in: int, d_out: int) -> np.ndarray:
        return (rng.standard_normal((d_in, d_out), dtype=np.float32) / np.sqrt(d_in)).astype(np.float32)

    layers = [{n: mat(*s) for n, s in layer_shapes(cfg).items()} for _ in range(cfg.num_layers)]
    return layers, mat(cfg.hidden_size, cfg.vocab_size)


def skeleton_step(x, layers, head, xp):
    """One decode step's matmuls on ``x: [b, hidden]``; ``xp`` is the array namespace (jnp, torch or numpy)."""
    for w in layers:
        q, k, v = x @ w["q"], x @ w["k"], x @ w["v"]
        # k and v join the chain through a cheap reduction so that no product can be skipped as dead code.
        x = x + (q + (k.sum() + v.sum()) * 1e-6) @ w["o"]
        x = x + ((x @ w["gate"]) * (x @ w["up"])) @ w["down"]
        x = x / (1.0 + abs(x).max())
    logits = x @ head
    return x + 1e-3 * logits[:, : x.shape[1]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="bench_57m")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import torch

    from stepjax.models.llm.presets import llm_preset

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    cfg = llm_preset(args.preset)
    layers, head = random_weights(cfg)
    x0 = np.random.default_rng(1).standard_normal((args.batch, cfg.hidden_size), dtype=np.float32)

    @jax.jit
    def xla_run(x, layers, head):
        return jax.lax.fori_loop(0, args.steps, lambda _, x: skeleton_step(x, layers, head, jnp), x)

    jl, jh, jx = jax.tree.map(jnp.asarray, layers), jnp.asarray(head), jnp.asarray(x0)
    tl, th, tx = jax.tree.map(torch.from_numpy, layers), torch.from_numpy(head), torch.from_numpy(x0)

    def torch_run():
        with torch.inference_mode():
            x = tx
            for _ in range(args.steps):
                x = skeleton_step(x, tl, th, torch)

    def numpy_run():
        x = x0
        for _ in range(args.steps):
            x = skeleton_step(x, layers, head, np)

    runs = {"XLA (jax.jit)": lambda: xla_run(jx, jl, jh).block_until_ready(), "torch": torch_run, "numpy": numpy_run}
    ms = {name: 1e3 * median(time_calls(fn, warmup=2, repeats=args.rounds)) / args.steps for name, fn in runs.items()}
    weight_mb = (sum(w.nbytes for layer in layers for w in layer.values()) + head.nbytes) / 1e6
    print(f"{args.preset}, batch {args.batch}, float32, {weight_mb:.0f} MB of weights per step, {args.steps} steps")
    rows = [[name, t, 1e3 * args.batch / t, weight_mb / t] for name, t in ms.items()]
    print(format_table(["library", "ms per step", "tokens/s", "weight GB/s"], rows))
    print(result_line(f"decode_gemm_floor_b{args.batch}_ms", ms["XLA (jax.jit)"], "ms"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

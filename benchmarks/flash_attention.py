"""Flash attention (stepjax Pallas kernel) vs ``jax.nn.dot_product_attention`` on a GPU: forward and forward+backward.

Run on a GPU machine: ``python -m benchmarks.flash_attention`` (bfloat16, causal, batch 1, 16 query heads, 16 KV
heads, head_dim 128, 4k/8k/16k tokens). Options: ``--seqs``, ``--batch``, ``--heads``, ``--kv_heads``,
``--head_dim``, ``--alibi`` (adds the Step1 square-root ALiBi to our side only: the peer has no such bias, so this
measures its cost, not a like-for-like race), ``--rounds``, ``--warmup``. On a CPU the module exits with a message,
except for a smoke run of the harness: ``--interpret --tiny`` (the kernel interpreted, tiny shapes, the peer's XLA
implementation).

The peer is ``jax.nn.dot_product_attention(..., is_causal=True, implementation="cudnn")`` (cuDNN flash attention),
or its ``"xla"`` implementation where cuDNN refuses the configuration (the table says which). Before timing, the
two sides' outputs and gradients (for a fixed random cotangent) must agree to bfloat16 accuracy. Times are medians
of jitted calls after warm-up, the two sides interleaved; TFLOP/s counts the causal matmul FLOPs
(forward ``2 * b * h * s^2 * d``, backward 2.5x that). RESULT: peer time / our time for forward+backward at the
longest sequence (> 1 means the kernel is faster).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

from benchmarks.common import format_table, interleaved, median, ratio, result_line


def import_flash():
    """The module ``stepjax.kernels.flash_attention``, also from a plain checkout where stepjax is not pip-installed
    (the ``kernels/`` folder is mapped to ``stepjax.kernels`` by setup.cfg's ``package_dir`` only when installed).
    By ``importlib``: ``import stepjax.kernels.flash_attention as fa`` would bind the *function* of that name, which
    ``stepjax.kernels`` re-exports and which shadows the submodule attribute."""
    name = "stepjax.kernels.flash_attention"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError:
        import stepjax

        root = Path(__file__).resolve().parents[1] / "kernels"
        spec = importlib.util.spec_from_file_location(
            "stepjax.kernels", root / "__init__.py", submodule_search_locations=[str(root)]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules["stepjax.kernels"] = module
        stepjax.kernels = module
        spec.loader.exec_module(module)
        return importlib.import_module(name)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seqs", default="4096,8192,16384", help="comma-separated sequence lengths")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv_heads", type=int, default=16)
    p.add_argument("--head_dim", type=int, default=128)
    p.add_argument("--alibi", action="store_true", help="square-root ALiBi on the kernel side")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--interpret", action="store_true", help="run the kernel in Pallas interpret mode (CPU smoke run)")
    p.add_argument("--tiny", action="store_true", help="tiny shapes (with --interpret)")
    return p.parse_args(argv)


def _peer(jax, impl: str):
    def attend(q, k, v):
        return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=impl)

    return attend


def main(argv: list[str] | None = None) -> float:
    args = _parse(argv)
    import jax
    import jax.numpy as jnp

    fa = import_flash()
    on_gpu = jax.default_backend() in ("gpu", "cuda", "rocm")
    if not on_gpu and not args.interpret:
        sys.exit(
            f"benchmarks.flash_attention needs a GPU (JAX backend here: {jax.default_backend()}); "
            "for a CPU smoke run of the harness use --interpret --tiny"
        )
    if args.tiny:
        args.seqs, args.batch, args.heads, args.kv_heads, args.head_dim = "64,96", 1, 2, 1, 16
        args.rounds, args.warmup = 2, 1
    seqs = [int(s) for s in args.seqs.split(",")]
    b, h, kvh, d = args.batch, args.heads, args.kv_heads, args.head_dim
    blocks = fa.BlockSizes(16, 16, 16, 16) if args.tiny else None
    slopes = None
    if args.alibi:
        from stepjax.nn.positions import alibi_slopes

        slopes = jnp.asarray(alibi_slopes(h), jnp.float32)
    print(
        f"jax {jax.__version__}, device {jax.devices()[0].device_kind}, bfloat16, causal, batch {b}, heads {h}/{kvh}, "
        f"head_dim {d}, sqrt-ALiBi on our side: {args.alibi}, interpret: {args.interpret}",
        flush=True,
    )

    def ours(q, k, v):
        return fa.flash_attention(
            q,
            k,
            v,
            causal=True,
            alibi_slopes=slopes,
            alibi_sqrt=True,
            impl="pallas",
            block_sizes=blocks,
            interpret=args.interpret,
        )

    rows, last_ratio = [], float("nan")
    for s in seqs:
        kq, kk, kv, kc = jax.random.split(jax.random.key(s), 4)
        q = jax.random.normal(kq, (b, s, h, d), jnp.bfloat16)
        k = jax.random.normal(kk, (b, s, kvh, d), jnp.bfloat16)
        v = jax.random.normal(kv, (b, s, kvh, d), jnp.bfloat16)
        ct = jax.random.normal(kc, (b, s, h, d), jnp.bfloat16)
        peer_impl = "cudnn" if on_gpu else "xla"
        try:
            jax.jit(_peer(jax, peer_impl)).lower(q, k, v).compile()
        except Exception as err:  # cuDNN refuses some shapes/dtypes: fall back to XLA and say so
            print(f"seq {s}: cudnn unavailable ({type(err).__name__}: {str(err)[:120]}); peer = xla", flush=True)
            peer_impl = "xla"
        sides = {"stepjax pallas": ours, f"jax.nn ({peer_impl})": _peer(jax, peer_impl)}
        fwd = {n: jax.jit(f) for n, f in sides.items()}
        fwd_bwd = {
            n: jax.jit(jax.grad(lambda q, k, v, f=f: jnp.sum((f(q, k, v) * ct).astype(jnp.float32)), argnums=(0, 1, 2)))
            for n, f in sides.items()
        }
        if not args.alibi:  # same maths: check before timing
            (o_a, o_b), (g_a, g_b) = ([f(q, k, v) for f in fwd.values()], [f(q, k, v) for f in fwd_bwd.values()])
            out_err = float(jnp.max(jnp.abs(o_a.astype(jnp.float32) - o_b.astype(jnp.float32))))
            grad_err = max(
                float(jnp.max(jnp.abs(x.astype(jnp.float32) - y.astype(jnp.float32))))
                / max(float(jnp.max(jnp.abs(y.astype(jnp.float32)))), 1e-6)
                for x, y in zip(g_a, g_b, strict=True)
            )
            print(f"seq {s}: max |out diff| {out_err:.3g}, max relative |grad diff| {grad_err:.3g}", flush=True)
            if out_err > 5e-2 or grad_err > 5e-2:
                sys.exit(f"error: kernel and peer disagree at seq {s} (out {out_err:.3g}, grad {grad_err:.3g})")
        flops_fwd = 2.0 * b * h * s * s * d  # causal: half of 4 b h s^2 d
        t_fwd = interleaved(
            {n: (lambda f=f: jax.block_until_ready(f(q, k, v))) for n, f in fwd.items()},
            warmup=args.warmup,
            rounds=args.rounds,
        )
        t_all = interleaved(
            {n: (lambda f=f: jax.block_until_ready(f(q, k, v))) for n, f in fwd_bwd.items()},
            warmup=args.warmup,
            rounds=args.rounds,
        )
        for n in sides:
            tf, ta = median(t_fwd[n]), median(t_all[n])
            rows.append((s, n, 1e3 * tf, flops_fwd / tf / 1e12, 1e3 * ta, 3.5 * flops_fwd / ta / 1e12))
        names = list(sides)
        last_ratio = ratio(median(t_all[names[1]]), median(t_all[names[0]]))
    print()
    print(format_table(["seq", "side", "fwd ms", "fwd TFLOP/s", "fwd+bwd ms", "fwd+bwd TFLOP/s"], rows))
    label = f"{seqs[-1] // 1024}k" if seqs[-1] >= 1024 else str(seqs[-1])
    print(f"load average {os.getloadavg()[0]:.1f}")
    print(result_line(f"flash_fwd_bwd_vs_jax_{label}", last_ratio, "x"))
    return last_ratio


if __name__ == "__main__":
    main()

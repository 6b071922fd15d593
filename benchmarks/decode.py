"""Greedy decode throughput, the stepjax KV-cache sampler vs Hugging Face ``generate``, on the same weights.

Run: ``python -m benchmarks.decode`` (a few minutes on a 2-core machine). Options: ``--preset``, ``--prompt``,
``--new``, ``--batches``, ``--rounds``, ``--warmup``, ``--torch_device``. On a GPU machine both sides run on the GPU
(JAX's default device; torch on ``cuda``), both with full float32 matmuls (no TF32).

What is compared (both float32; on the CPU unless a GPU is there):
  * the model: ``llm_preset('bench_57m')`` (Llama-style: hidden 512, 8 layers, 8 heads, 2 KV heads, SwiGLU 1536,
    vocab 32000, untied head), randomly initialised by torch as a transformers ``LlamaForCausalLM`` and converted to
    a stepjax ``DecoderLM`` by ``stepjax.models.llm.params.hf_to_params`` (the train-step benchmark's model);
  * the task: 32-token random prompts, 128 new tokens, greedy, no stop token (both sides run all 128 steps), batch
    1 and 8. stepjax runs ``stepjax.sampling.generate`` (prefill + ``lax.while_loop`` decode inside one ``jax.jit``,
    raw log-probs included); transformers runs ``model.generate(do_sample=False)`` with its default dynamic cache
    under ``torch.inference_mode`` and ``set_num_threads(os.cpu_count())``.

Before timing, both sides' greedy tokens must be identical for every row (on the CPU the run stops otherwise; on a
GPU, where reduction orders differ, a mismatch is printed as a warning with the first differing step). Reported:
median seconds per ``generate`` call over ``--rounds`` alternating calls after ``--warmup`` untimed ones
(``benchmarks.common.interleaved``), tokens/s = batch x new tokens / median, their ratio (stepjax / HF), stepjax's
compile time (first call minus the median call; excluded from the medians) and, for batch 1, the fraction of the
memory-bandwidth limit: each decode step must read every weight once (all parameters but the embedding table, of
which one row per token is read), so tokens/s <= bandwidth / weight bytes, with the bandwidth of an in-place scale
of a 512 MiB float32 array (read + write counted, best of 10) measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

import numpy as np

from benchmarks.common import format_table, interleaved, median, ratio, result_line
from benchmarks.train_step import build_torch_model


def memory_bandwidth(mib: int = 512, repeats: int = 10) -> float:
    """Bytes/s of a jitted in-place ``x * c`` on a ``mib`` MiB float32 array (donated, so no allocation is timed;
    read + write both counted). Best of ``repeats``: a peak is what the hardware can do."""
    import jax
    import jax.numpy as jnp

    scale = jax.jit(lambda x: x * 1.0000001, donate_argnums=0)
    x = jnp.ones((mib * 2**20 // 4,), jnp.float32)
    x = scale(x).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        x = scale(x).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * mib * 2**20 / best


def weight_bytes_per_token(cfg) -> int:
    """Bytes a decode step must read: every parameter except the embedding table (one row per token)."""
    import jax.numpy as jnp

    return (cfg.num_params() - cfg.vocab_size * cfg.hidden_size) * jnp.dtype(cfg.storage_dtype).itemsize


def build_stepjax_model(cfg, hf_state: dict[str, np.ndarray]):
    """``(graphdef, state)`` of a ``DecoderLM(cfg)`` holding the Hugging Face weights (no random init)."""
    from flax import nnx

    from stepjax.models.llm import DecoderLM
    from stepjax.models.llm.params import hf_to_params, load_params_into

    model = nnx.eval_shape(lambda: DecoderLM(cfg, rngs=nnx.Rngs(0)))
    load_params_into(model, hf_to_params(hf_state, cfg))
    return nnx.split(model)


def hf_generate_fn(model, prompts: np.ndarray, new_tokens: int, device: str = "cpu") -> Callable[[], np.ndarray]:
    """A blocking ``fn() -> generated ids [batch, new_tokens]`` running ``model.generate`` greedily on ``device``
    (where ``model`` lives; copying the result to host memory waits for the GPU)."""
    import torch

    ids = torch.from_numpy(prompts).long().to(device)
    mask = torch.ones_like(ids)
    model.generation_config.eos_token_id = None  # run every step, like the stepjax side
    model.generation_config.pad_token_id = 0

    def run() -> np.ndarray:
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                do_sample=False,
            )  # fmt: skip
        return out[:, ids.shape[1] :].cpu().numpy()

    return run


def stepjax_generate_fn(graphdef, state, prompts: np.ndarray, new_tokens: int) -> Callable[[], np.ndarray]:
    """A blocking ``fn() -> generated ids [batch, new_tokens]`` running ``stepjax.sampling.generate`` greedily."""
    import jax

    from stepjax.sampling import SamplingConfig, generate

    config = SamplingConfig(max_new_tokens=new_tokens, greedy=True)
    lengths = np.full((prompts.shape[0],), prompts.shape[1], np.int32)
    rng = jax.random.key(0)

    def run() -> np.ndarray:
        return np.asarray(generate(graphdef, state, prompts, lengths, config, rng).tokens)

    return run


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="bench_57m")
    p.add_argument("--prompt", type=int, default=32, help="prompt tokens")
    p.add_argument("--new", type=int, default=128, help="new tokens per row")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per side after compilation")
    p.add_argument("--rounds", type=int, default=5, help="timed calls per side (alternating)")
    p.add_argument(
        "--torch_device",
        default="auto",
        choices=("auto", "cpu", "cuda"),
        help="where HF runs; auto: cuda when JAX runs on a GPU and torch sees one, else cpu",
    )
    return p.parse_args(argv)


def torch_device(choice: str, jax_platform: str) -> str:
    """The torch device for the HF side: the same kind of device as JAX's, so the comparison is like for like."""
    import torch

    if choice != "auto":
        return choice
    return "cuda" if jax_platform == "gpu" and torch.cuda.is_available() else "cpu"


def main(argv: list[str] | None = None) -> float:
    args = _parse(argv)
    import jax
    import torch

    from stepjax.models.llm import llm_preset

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    platform = jax.devices()[0].platform
    device = torch_device(args.torch_device, platform)
    if platform != "cpu":
        # Full float32 matmuls on both sides (torch's CUDA default; XLA on a GPU would otherwise use TF32).
        jax.config.update("jax_default_matmul_precision", "highest")
    cfg = llm_preset(args.preset)
    batches = [int(b) for b in args.batches.split(",")]
    print(
        f"jax {jax.__version__} ({platform}), torch {torch.__version__} on {device}, torch threads {threads}, "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    bandwidth = memory_bandwidth()
    torch_model = build_torch_model(cfg, attn="sdpa").eval()
    hf_state = {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}
    graphdef, state = build_stepjax_model(cfg, hf_state)
    torch_model = torch_model.to(device)
    all_prompts = np.random.default_rng(0).integers(0, cfg.vocab_size, (max(batches), args.prompt)).astype(np.int32)

    rows, results = [], {}
    for batch in batches:
        prompts = all_prompts[:batch]
        ours = stepjax_generate_fn(graphdef, state, prompts, args.new)
        theirs = hf_generate_fn(torch_model, prompts, args.new, device)
        start = time.perf_counter()
        our_tokens = ours()
        first_call = time.perf_counter() - start
        their_tokens = theirs()
        if our_tokens.shape != their_tokens.shape or not np.array_equal(our_tokens, their_tokens):
            same = (our_tokens == their_tokens).all(axis=1) if our_tokens.shape == their_tokens.shape else []
            message = (
                f"batch {batch}: greedy tokens differ from Hugging Face ({int(np.sum(same))} of {batch} rows "
                f"identical; shapes {our_tokens.shape} vs {their_tokens.shape})"
            )
            if platform == "cpu" or our_tokens.shape != their_tokens.shape:
                sys.exit(f"error: {message}")
            # On a GPU, kernels reduce in other orders than on the CPU; a near-tie can flip an argmax of random
            # weights and the continuation then differs. Both sides still decode every step, so timing stands.
            first = int(np.argmax((our_tokens != their_tokens).any(axis=0)))
            print(f"warning: {message}; first differing position {first}", flush=True)
        times = interleaved({"stepjax": ours, "hf": theirs}, warmup=args.warmup, rounds=args.rounds)
        t_sx, t_hf = median(times["stepjax"]), median(times["hf"])
        tokens = batch * args.new
        results[batch] = (tokens / t_sx, tokens / t_hf)
        limit = bandwidth / weight_bytes_per_token(cfg)
        frac = lambda tps: f"{100 * tps / limit:.0f}%" if batch == 1 else "-"
        rows.append((batch, "stepjax (jax.jit)", t_sx, tokens / t_sx, ratio(t_hf, t_sx), frac(tokens / t_sx)))
        rows.append((batch, "HF generate", t_hf, tokens / t_hf, 1.0, frac(tokens / t_hf)))
        print(
            f"batch {batch}: greedy tokens identical ({batch} x {args.new}); stepjax compile "
            f"{first_call - t_sx:.1f} s (first call {first_call:.1f} s minus the median; excluded)",
            flush=True,
        )

    print()
    print(
        f"{args.preset}: {cfg.num_params() / 1e6:.1f}M params, float32, prompt {args.prompt} tokens, {args.new} new "
        f"tokens, greedy; {args.rounds} timed calls per side after {args.warmup} warm-up, alternating"
    )
    print(
        f"memory bandwidth (in-place scale of 512 MiB, read + write, best of 10): {bandwidth / 1e9:.1f} GB/s; weights "
        f"read per decode step {weight_bytes_per_token(cfg) / 1e6:.0f} MB -> batch-1 limit "
        f"{bandwidth / weight_bytes_per_token(cfg):.0f} tokens/s"
    )
    print(format_table(["batch", "side", "median s/call", "tokens/s", "x HF", "of bw limit"], rows))
    print(f"load average now {os.getloadavg()[0]:.1f} on {threads} cores")
    key = 8 if 8 in results else max(results)
    speedup = results[key][0] / results[key][1]
    print(result_line(f"decode_b{key}_vs_hf", speedup, "x"))
    return speedup


if __name__ == "__main__":
    main()

"""One LM train step, stepjax vs PyTorch + Hugging Face transformers, on the same weights and batch.

Run: ``python -m benchmarks.train_step`` (about 3 minutes on a 2-core machine). Options: ``--rounds``, ``--warmup``,
``--preset``, ``--batch``, ``--seq``, ``--torch_attn``.

What is compared (both float32, CPU):
  * the model: ``llm_preset('bench_57m')`` (Llama-style: hidden 512, 8 layers, 8 heads, 2 KV heads, SwiGLU 1536,
    vocab 32000, untied head) as a stepjax ``DecoderLM`` and as a transformers ``LlamaForCausalLM`` built from one
    set of weights (random torch init, converted by ``stepjax.models.llm.params.hf_to_params``);
  * the step: forward + token-mean cross-entropy + backward + AdamW (lr 3e-4, betas 0.9/0.999, eps 1e-8, weight
    decay 0.1 on matrices only, on both sides). stepjax runs its real step (``make_train_step`` + ``jit_train_step``:
    donated state, metrics, non-finite guard); torch runs ``zero_grad / forward / cross_entropy / backward /
    AdamW.step`` (``torch.optim.AdamW``, foreach). torch's attention is ``--torch_attn``: default ``sdpa``, the
    faster of the two on the 2-core machines (3.93 s against 3.99 s for ``eager``, equal within noise);
  * threads: torch ``set_num_threads(os.cpu_count())`` (2 on the development machines); XLA uses its default CPU
    thread pool, one thread per core. No XLA flags are set: none of the CPU flags tried (oneDNN, XNNPACK or more
    YNNPACK fusion types, concurrency-optimised scheduler off, new xtile lowering, tiling propagation) made the step
    measurably faster, and the extra YNNPACK fusions changed results.

Before timing, the two models' logits on the batch must agree to 1e-4 (max abs). Both then take the same steps on
the same batch in alternation (``benchmarks.common.interleaved``); the losses they report at every step are compared
as a check that they train identically. Reported: median step times after warm-up, their ratio (torch / stepjax,
> 1 = stepjax faster), stepjax's compile time, and MFU = ``cfg.flops_per_token(seq) * batch * seq / step time``
over the float32 matmul peak measured in the same run (jitted ``jnp.dot`` of 2048 x 2048 matrices).
``LLMConfig.flops_per_token`` counts 6 FLOPs per matmul parameter per token (embedding lookup excluded, output head
included) plus the causal attention matmuls (3 x 2 x 2 x layers x heads x head_dim x seq / 2).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.common import format_table, interleaved, matmul_peak_flops, median, ratio, result_line

LOGITS_ATOL = 1e-4
OPTIMIZER = dict(name="adamw", learning_rate=3e-4, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.1)


def make_batch(vocab_size: int, batch: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A random next-token batch in stepjax's batch contract (one sample per row, every target trained)."""
    tokens = np.random.default_rng(seed).integers(0, vocab_size, (batch, seq + 1)).astype(np.int32)
    return dict(
        inputs=tokens[:, :-1].copy(),
        targets=tokens[:, 1:].copy(),
        loss_mask=np.ones((batch, seq), np.float32),
        positions=np.broadcast_to(np.arange(seq, dtype=np.int32), (batch, seq)).copy(),
        segment_ids=np.ones((batch, seq), np.int32),
    )


def build_torch_model(cfg, *, seed: int = 0, attn: str = "sdpa"):
    """A float32 ``LlamaForCausalLM`` with ``cfg``'s shape, randomly initialised by torch from ``seed``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_cfg = LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.mlp_dim,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim,
        rms_norm_eps=cfg.norm_eps,
        rope_theta=cfg.rope_theta,
        max_position_embeddings=cfg.max_seq_len,
        tie_word_embeddings=cfg.tie_embeddings,
        initializer_range=cfg.initializer_range,
        attn_implementation=attn,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(hf_cfg).float().train()


def build_stepjax_state(cfg, hf_state: dict[str, np.ndarray], tx):
    """``(graphdef, TrainState)`` of a ``DecoderLM(cfg)`` holding the given Hugging Face weights."""
    import jax.numpy as jnp
    from flax import nnx

    from stepjax.models.llm import DecoderLM
    from stepjax.models.llm.params import hf_to_params
    from stepjax.train import create_train_state

    graphdef, state = create_train_state(lambda rngs: DecoderLM(cfg, rngs=rngs), tx, seed=0)
    params = state.params
    nnx.replace_by_pure_dict(params, _tree_map(jnp.asarray, hf_to_params(hf_state, cfg)))
    return graphdef, state.replace(params=params, opt_state=tx.init(params))


def _tree_map(fn: Callable, tree: Any) -> Any:
    return {k: _tree_map(fn, v) for k, v in tree.items()} if isinstance(tree, dict) else fn(tree)


def torch_optimizer(model, cfg: dict[str, Any]):
    """``torch.optim.AdamW`` matching ``stepjax.train.make_optimizer(cfg)``: weight decay on matrices only."""
    import torch

    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [dict(params=decay, weight_decay=cfg["weight_decay"]), dict(params=no_decay, weight_decay=0.0)]
    return torch.optim.AdamW(groups, lr=cfg["learning_rate"], betas=(cfg["b1"], cfg["b2"]), eps=cfg["eps"])


def make_torch_step(model, optimizer, batch: dict[str, np.ndarray]) -> Callable[[], float]:
    """A blocking ``step() -> loss`` (loss before the update, like stepjax's metrics)."""
    import torch
    import torch.nn.functional as F

    inputs = torch.from_numpy(batch["inputs"]).long()
    positions = torch.from_numpy(batch["positions"]).long()
    targets = torch.from_numpy(batch["targets"]).long()

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        logits = model(input_ids=inputs, position_ids=positions).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def logits_max_abs_diff(torch_model, graphdef, state, batch: dict[str, np.ndarray]) -> float:
    """Max |logits_torch - logits_stepjax| over the batch (no gradient, no update)."""
    import jax
    import torch

    from stepjax.train import merge_model

    with torch.no_grad():
        ref = torch_model(
            input_ids=torch.from_numpy(batch["inputs"]).long(),
            position_ids=torch.from_numpy(batch["positions"]).long(),
        ).logits.numpy()

    @jax.jit
    def forward(params, extra, inputs, positions, segment_ids):
        return merge_model(graphdef, params, extra)(inputs, positions, segment_ids)

    ours = forward(state.params, state.extra, batch["inputs"], batch["positions"], batch["segment_ids"])
    return float(np.max(np.abs(np.asarray(ours) - ref)))


class StepjaxRunner:
    """Holds the (donated) train state between calls; ``compile()`` then ``step() -> loss``."""

    def __init__(self, graphdef, state, tx, batch: dict[str, np.ndarray]):
        import jax

        from stepjax.train import jit_train_step, lm_loss_fn, make_train_step

        step = make_train_step(graphdef, lm_loss_fn(), tx, loss_weights={"lm": 1.0})
        self._jitted = jit_train_step(step, state)
        self.state = state
        self.batch = jax.device_put(batch)
        self._compiled = None

    def compile(self) -> float:
        """Compiles the step; returns the seconds it took (tracing + lowering + XLA)."""
        start = time.perf_counter()
        self._compiled = self._jitted.lower(self.state, self.batch).compile()
        return time.perf_counter() - start

    def step(self) -> float:
        if self._compiled is None:
            self.compile()
        self.state, metrics = self._compiled(self.state, self.batch)
        return float(metrics["loss"])  # blocks until the step is done


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="bench_57m")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per side after compilation")
    p.add_argument("--rounds", type=int, default=7, help="timed steps per side (alternating)")
    p.add_argument("--torch_attn", default="sdpa", choices=("sdpa", "eager"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> float:
    args = _parse(argv)
    import jax
    import torch

    from stepjax.models.llm import llm_preset
    from stepjax.train import make_optimizer

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    cfg = llm_preset(args.preset)
    batch = make_batch(cfg.vocab_size, args.batch, args.seq)
    print(
        f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__}, torch threads {threads}, "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )

    peak = matmul_peak_flops()
    torch_model = build_torch_model(cfg, attn=args.torch_attn)
    hf_state = {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}
    tx, _ = make_optimizer(OPTIMIZER, total_steps=1000)
    graphdef, state = build_stepjax_state(cfg, hf_state, tx)
    diff = logits_max_abs_diff(torch_model, graphdef, state, batch)
    print(f"logits max |torch - stepjax| = {diff:.2e} (limit {LOGITS_ATOL:g})", flush=True)
    if not diff <= LOGITS_ATOL:
        sys.exit(f"error: the two models disagree (max abs logit difference {diff:.3e} > {LOGITS_ATOL:g})")

    runner = StepjaxRunner(graphdef, state, tx, batch)
    del state  # donated to the first step
    compile_s = runner.compile()
    torch_step = make_torch_step(torch_model, torch_optimizer(torch_model, OPTIMIZER), batch)
    losses: dict[str, list[float]] = {"stepjax": [], "torch": []}

    def timed(name: str, fn: Callable[[], float]) -> Callable[[], None]:
        return lambda: losses[name].append(fn())

    times = interleaved(
        {"stepjax": timed("stepjax", runner.step), "torch": timed("torch", torch_step)},
        warmup=args.warmup,
        rounds=args.rounds,
    )
    loss_diff = max(abs(a - b) for a, b in zip(losses["stepjax"], losses["torch"], strict=True))

    flops = cfg.flops_per_token(args.seq) * args.batch * args.seq
    t_sx, t_pt = median(times["stepjax"]), median(times["torch"])
    rows = [
        ("stepjax (jax.jit)", t_sx, min(times["stepjax"]), flops / t_sx / 1e9, 100 * flops / t_sx / peak),
        (f"torch ({args.torch_attn})", t_pt, min(times["torch"]), flops / t_pt / 1e9, 100 * flops / t_pt / peak),
    ]
    print()
    print(
        f"{args.preset}: {cfg.num_params() / 1e6:.1f}M params, batch {args.batch} x {args.seq} tokens, float32, "
        f"{flops / 1e9:.1f} GFLOP per step (LLMConfig.flops_per_token); {args.rounds} timed steps per side "
        f"after {args.warmup} warm-up, alternating"
    )
    print(
        f"float32 matmul peak (jnp.dot 2048^2, best of 10): {peak / 1e9:.1f} GFLOP/s; "
        f"stepjax compile {compile_s:.1f} s (excluded)"
    )
    print(
        f"losses over the {len(losses['torch'])} shared steps: max |torch - stepjax| = {loss_diff:.2e} "
        f"(first {losses['torch'][0]:.4f}, last {losses['torch'][-1]:.4f})"
    )
    print(format_table(["side", "median s/step", "best s/step", "GFLOP/s", "MFU %"], rows))
    speedup = ratio(t_pt, t_sx)
    print(
        f"torch / stepjax step time: {speedup:.3f} (> 1 means stepjax is faster); load average now "
        f"{os.getloadavg()[0]:.1f} on {threads} cores (a busy machine slows torch more than XLA)"
    )
    print(result_line("train_step_vs_torch", speedup, "x"))
    return speedup


if __name__ == "__main__":
    main()

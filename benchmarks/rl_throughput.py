"""RL throughput (prompts per second through rollout + update): stepjax's GRPO step vs TRL's ``GRPOTrainer``.

Run: ``python -m benchmarks.rl_throughput`` (about a minute on a 2-core machine). Options: ``--prompts``, ``--gens``,
``--max_new``, ``--minibatches``, ``--iters`` (timed stepjax iterations), ``--trl_iters`` (timed TRL iterations),
``--torch_threads``.

What is compared (both float32, CPU), on the ``configs/grpo.py:tiny`` RL setting:
  * the model: ``llm_preset('tiny')`` with the byte vocabulary (2 layers, hidden 64, 4 heads, 2 KV heads, SwiGLU
    128, vocab 259) as a stepjax ``DecoderLM`` and as a transformers ``LlamaForCausalLM`` built from one set of
    weights (random torch init, converted by ``hf_to_params``); their logits must agree to 1e-4 before timing;
  * the tokenizer: stepjax's ``ByteTokenizer``; for TRL a ``PreTrainedTokenizerFast`` with the same ids (byte-level
    BPE without merges: byte ``b`` is id ``b``; ``<pad>`` 256, ``<bos>`` 257, ``<eos>`` 258; BOS prepended), saved
    with the model in a temporary folder;
  * the task: arithmetic prompts (``make_arithmetic_split``), reward ``orz_math`` (TRL: the same function wrapped
    as a reward function; "stopped" = the completion ends in EOS);
  * one iteration: ``prompts x gens`` completions (32 x 8, up to 64 new tokens, temperature 1, no top-k/top-p),
    group advantages (std-scaled per group), clipped policy loss (eps 0.2, beta 0), then ``minibatches`` (4)
    optimizer steps of ``prompts x gens / minibatches`` rows each (AdamW lr 3e-4, betas 0.9/0.95, no weight decay,
    grad-norm clip 1.0, constant lr). TRL: ``per_device_train_batch_size = rows / minibatches``,
    ``gradient_accumulation_steps = 1``, ``steps_per_generation = minibatches``, ``num_generations = gens``, so one
    generation round is one iteration and each of its ``minibatches`` trainer steps is one optimizer step.

Differences that remain (inherent to the two designs, not tuned away):
  * TRL's default ``loss_type='dapo'`` normalises by the active tokens of the whole generation batch; stepjax uses
    token-mean per mini-batch (``aggregation='token_mean'``). Same cost.
  * with ``steps_per_generation > gradient_accumulation_steps`` TRL runs an extra forward pass over the rollout for
    the old log-probs; stepjax takes them from the sampler (equal to a training forward, tested in tests/sampling).
  * TRL pads prompts left and samples with ``model.generate`` (KV cache, eager torch); stepjax samples with its
    jitted ``generate`` (prompts right-padded to ``prompt_width`` 16).
  * torch runs with 1 intra-op thread by default (``--torch_threads``): at this model size its ops are too small to
    gain from threads, and on the shared 2-core machines 2 threads made TRL 6-15x slower (16-47 s per round against
    2.5-3 s with 1 thread, OpenMP barriers under background load). XLA keeps its default thread pool.
  * the runs are sequential (TRL's trainer owns its loop): half of stepjax's timed iterations run before TRL, half
    after, so drifting background load hits both; the load average is printed.

Iteration time: stepjax, the wall time of one ``step(state, records)`` call (rollout, rewards, advantages, updates;
compile time of the first call is reported apart); TRL, the time between the ends of consecutive generation rounds
(``on_step_end`` of every ``minibatches``-th trainer step; includes its data loading, generation, reward, old
log-prob pass and updates). Warm-up: the first iteration of each side is not timed. Reported: median seconds per
iteration, prompts/s = prompts / median, and their ratio (stepjax / TRL, > 1 = stepjax faster).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from typing import Any

import numpy as np

from benchmarks.common import format_table, median, ratio, result_line
from benchmarks.train_step import build_stepjax_state, build_torch_model, logits_max_abs_diff, make_batch

LOGITS_ATOL = 1e-4
PROMPT_WIDTH = 16  # configs/grpo.py:tiny rl.prompt_width
OPTIMIZER = dict(name="adamw", schedule="constant", b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0, grad_clip_norm=1.0)


def build_byte_tokenizer(save_dir: str | None = None):
    """A ``PreTrainedTokenizerFast`` with ``ByteTokenizer``'s ids: byte ``b`` -> ``b``, ``<pad>`` 256, ``<bos>``
    257, ``<eos>`` 258; ``<bos>`` prepended on encode; saved to ``save_dir`` when given."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    # ByteLevel maps every byte to one printable character; a merge-free BPE over them is a pure byte map.
    chars = _bytes_to_unicode()
    vocab = {chars[b]: b for b in range(256)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<pad>", "<bos>", "<eos>"])
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 257)])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>")
    ids = [hf.convert_tokens_to_ids(t) for t in ("<pad>", "<bos>", "<eos>")]
    if ids != [256, 257, 258]:
        raise RuntimeError(f"byte tokenizer specials got ids {ids}; expected [256, 257, 258]")
    if save_dir is not None:
        hf.save_pretrained(save_dir)
    return hf


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (what the ``ByteLevel`` pre-tokenizer emits)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


def model_config():
    """The tiny GRPO recipe's model: ``llm_preset('tiny')`` with the byte vocabulary (259) and 512 positions."""
    from stepjax.models.llm import llm_preset

    return dataclasses.replace(llm_preset("tiny"), vocab_size=259, rope_scaling=None, max_seq_len=512)


def trl_reward(completions: list[str], completion_ids: list[list[int]], ground_truth: list[str], **_) -> list[float]:
    """``orz_math`` as a TRL reward function (a completion "stopped" when it ends in EOS, id 258)."""
    from stepjax.rl.rewards import orz_math_reward

    return [
        orz_math_reward(text, answer=str(gt), finish_reason="stop" if ids and ids[-1] == 258 else "length")
        for text, ids, gt in zip(completions, completion_ids, ground_truth, strict=True)
    ]


class _RoundTimer:
    """A ``TrainerCallback`` stamping the end of every ``every``-th trainer step (one generation round)."""

    def __new__(cls, every: int):
        from transformers import TrainerCallback

        class Timer(TrainerCallback):
            def __init__(self):
                self.stamps: list[float] = []

            def on_train_begin(self, args, state, control, **kw):
                self.stamps.append(time.perf_counter())

            def on_step_end(self, args, state, control, **kw):
                if state.global_step % every == 0:
                    self.stamps.append(time.perf_counter())

        return Timer()


def run_trl(torch_model, tokenizer, records: list[dict], args, out_dir: str) -> tuple[list[float], list[float]]:
    """Seconds per generation round of TRL's ``GRPOTrainer`` (first round included, as element 0) and the mean
    completion length (tokens) of each logged round."""
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    rows = args.prompts * args.gens
    cfg = GRPOConfig(
        output_dir=out_dir,
        use_cpu=True,
        bf16=False,
        report_to="none",
        disable_tqdm=True,
        save_strategy="no",
        logging_steps=args.minibatches,  # one log per round: its mean completion length
        seed=0,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        adam_beta1=0.9,
        adam_beta2=0.95,
        weight_decay=0.0,
        max_grad_norm=1.0,
        per_device_train_batch_size=rows // args.minibatches,
        gradient_accumulation_steps=1,
        steps_per_generation=args.minibatches,
        num_generations=args.gens,
        num_iterations=1,
        max_completion_length=args.max_new,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        beta=0.0,
        epsilon=0.2,
        scale_rewards="group",
        max_steps=args.minibatches * (1 + args.trl_iters),
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )
    data = Dataset.from_list([{"prompt": r["prompt"], "ground_truth": str(r["ground_truth"])} for r in records])
    timer = _RoundTimer(args.minibatches)
    trainer = GRPOTrainer(
        model=torch_model,
        reward_funcs=trl_reward,
        args=cfg,
        train_dataset=data,
        processing_class=tokenizer,
        callbacks=[timer],
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    lengths = [log["completions/mean_length"] for log in trainer.state.log_history if "completions/mean_length" in log]
    return [float(t) for t in np.diff(timer.stamps)], lengths


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--gens", type=int, default=8)
    p.add_argument("--max_new", type=int, default=64)
    p.add_argument("--minibatches", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--iters", type=int, default=6, help="timed stepjax iterations (half before TRL, half after)")
    p.add_argument("--trl_iters", type=int, default=3, help="timed TRL generation rounds")
    p.add_argument("--torch_threads", type=int, default=1, help="torch intra-op threads (0: os.cpu_count())")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parse(argv)
    if (args.prompts * args.gens) % args.minibatches:
        sys.exit(f"error: --minibatches {args.minibatches} must divide prompts x gens = {args.prompts * args.gens}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import jax
    import jax.numpy as jnp
    import torch

    from stepjax.data import ByteTokenizer, make_arithmetic_split
    from stepjax.rl.rollout import PromptIterator
    from stepjax.rl.trainer import RLConfig, RLState, make_rl_step
    from stepjax.sampling import SamplingConfig
    from stepjax.train import make_optimizer

    threads = args.torch_threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    print(
        f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__}, torch threads {threads}, "
        f"load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    cfg = model_config()
    torch_model = build_torch_model(cfg)
    # ByteTokenizer's specials; TRL also stops at generation_config's EOS (LlamaConfig's default is 2, a byte here).
    for hf_cfg in (torch_model.config, torch_model.generation_config):
        hf_cfg.pad_token_id, hf_cfg.bos_token_id, hf_cfg.eos_token_id = 256, 257, 258
    hf_state = {k: v.detach().numpy().copy() for k, v in torch_model.state_dict().items()}
    iterations = args.iters + 1
    tx, schedule = make_optimizer(dict(OPTIMIZER, learning_rate=args.lr), total_steps=iterations * args.minibatches)
    graphdef, train_state = build_stepjax_state(cfg, hf_state, tx)
    diff = logits_max_abs_diff(torch_model, graphdef, train_state, make_batch(cfg.vocab_size, 4, 64))
    print(f"logits max |torch - stepjax| = {diff:.2e} (limit {LOGITS_ATOL:g})", flush=True)
    if not diff <= LOGITS_ATOL:
        sys.exit(f"error: the two models disagree (max abs logit difference {diff:.3e} > {LOGITS_ATOL:g})")

    n_records = max(1024, args.prompts * (iterations + args.trl_iters + 1))
    records = make_arithmetic_split("train", n_records, 0)
    tokenizer = ByteTokenizer()
    sampling = SamplingConfig(
        max_new_tokens=args.max_new,
        temperature=1.0,
        num_samples=args.gens,
        stop_tokens=(tokenizer.eos_id,),
        pad_id=tokenizer.pad_id,
    )
    rl_cfg = RLConfig(
        algorithm="grpo",
        prompt_width=PROMPT_WIDTH,
        reward_fns=("orz_math",),
        clip_eps=0.2,
        policy_minibatches=args.minibatches,
        aggregation="token_mean",
        group_scale="group",
    )
    rl_step = make_rl_step(rl_cfg, sampling, tokenizer, graphdef, tx, policy_schedule=schedule)
    state = RLState(
        step=jnp.zeros((), jnp.int32),
        policy=train_state,
        critic=jnp.zeros((), jnp.int32),
        rng=jax.random.key_data(jax.random.key(2)),
    )
    prompts = PromptIterator(records, args.prompts, seed=0)
    sx_times: list[float] = []
    rewards: list[float] = []
    sx_lengths: list[float] = []
    sx_split: list[tuple[float, float]] = []

    def sx_iterations(n: int) -> None:
        nonlocal state
        for _ in range(n):
            batch = next(prompts)
            start = time.perf_counter()
            state, metrics = rl_step(state, batch)  # metrics are host floats: the step has finished
            sx_times.append(time.perf_counter() - start)
            rewards.append(metrics["reward/mean"])
            sx_lengths.append(metrics["response_length/mean"])
            sx_split.append((metrics["time/rollout"], metrics["time/update"]))

    sx_iterations(1)
    sx_split.pop()
    first_s = sx_times.pop()  # compile (sampler + update) + one iteration
    before = (args.iters + 1) // 2
    sx_iterations(before)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = os.path.join(tmp, "model")
        hf_tokenizer = build_byte_tokenizer(model_dir)
        torch_model.save_pretrained(model_dir)  # the local model folder TRL's docs expect beside its tokenizer
        trl_all, trl_lengths = run_trl(torch_model, hf_tokenizer, records, args, os.path.join(tmp, "trl"))
    sx_iterations(args.iters - before)
    trl_first, trl_times = trl_all[0], trl_all[1:]
    if not trl_times:
        sys.exit(f"error: TRL produced {len(trl_all)} generation rounds; expected {1 + args.trl_iters}")

    t_sx, t_trl = median(sx_times), median(trl_times)
    # Mean generated tokens per completion: a random-init model rarely stops, so most run to max_new on both sides.
    sx_len, trl_len = float(np.mean(sx_lengths)), float(np.mean(trl_lengths)) if trl_lengths else float("nan")
    compile_s = first_s - t_sx
    rows = [
        ("stepjax (GRPO step)", t_sx, min(sx_times), args.prompts / t_sx, len(sx_times), first_s, sx_len),
        ("TRL GRPOTrainer", t_trl, min(trl_times), args.prompts / t_trl, len(trl_times), trl_first, trl_len),
    ]
    speedup = ratio(t_trl, t_sx)
    print(
        f"\nGRPO iteration: {args.prompts} prompts x {args.gens} samples, <= {args.max_new} new tokens, "
        f"{args.minibatches} optimizer steps; tiny byte LM ({cfg.num_layers} layers, d={cfg.hidden_size}, vocab "
        f"{cfg.vocab_size}); float32 CPU; load average now {os.getloadavg()[0]:.1f}"
    )
    print(
        format_table(
            ("side", "median s/iter", "min s/iter", "prompts/s", "timed iters", "first iter s", "mean tokens"), rows
        ),
    )
    print(f"seconds per iteration: stepjax {[round(t, 2) for t in sx_times]}, TRL {[round(t, 2) for t in trl_times]}")
    roll, upd = median([r for r, _ in sx_split]), median([u for _, u in sx_split])
    print(f"stepjax median split: rollout (sampling + rewards + advantages) {roll:.3f} s, updates {upd:.3f} s")
    print(f"stepjax compile time (first iteration - median): {compile_s:.1f} s")
    print(f"stepjax mean reward over its iterations: {np.mean(rewards):.3f}")
    print(f"throughput ratio stepjax / TRL: {speedup:.2f}x")
    print(result_line("grpo_vs_trl", speedup, "x"))
    return dict(logits_diff=diff, ratio=speedup, stepjax_s=t_sx, trl_s=t_trl, compile_s=compile_s)


if __name__ == "__main__":
    main()

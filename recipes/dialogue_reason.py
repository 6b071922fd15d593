"""Recipe ``dialogue_reason``: DialogueReason-style RL on Compound-QA(k) — an SFT warm start, then ORZ PPO.

A prompt holds k sub-problems of different kinds (``stepjax.data.compound_qa``: addition, sorting 3 digits, parity);
the reply answers them in order in one ``<answer>`` block. ``config.format`` picks the reply format: ``monologue``
(plain steps) or ``dialogue`` (a new scene and character per sub-problem, ``[scene j] Role: ...``).

Stage 1 (``warm_start``): next-token training on noisy traces of a k = 1 / k > 1 mix (``data.k_weights``), rendered
at load time so k and the order are resampled every epoch; ``<workdir>/warm_start``.
Stage 2 (``rl``): ORZ PPO (``stepjax.rl.make_rl_step``, the ``orz_rl`` recipe's optimizer and RL settings) from those
weights with the Compound-QA reward (``stepjax.rl.compound_rewards``: AllAcc or Acc, gated by the format check and
the length budget, which grows with k); ``<workdir>/rl``. Both stages resume.

Evaluation (``stepjax.evals.compound_accuracy``): Acc(k) and AllAcc(k) for k in ``eval.ks`` on held-out problems,
greedy and one temperature-1 sample, for the warm-start model (iteration 0) and during RL. Outputs: ``summary.json``,
``acc_vs_k.png`` (base vs trained), ``rl_curve.png``. With ``compare.seeds`` and ``compare.formats`` set, the recipe
runs every (format, seed) into ``<workdir>/<format>_seed<seed>`` (finished runs are kept) and writes the mean and
spread over seeds: ``acc_vs_k.png``, ``acc_vs_k.md``, ``acc_vs_k.json`` (``recipes/dialogue_reason_report.py``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import ml_collections

from recipes import lm_sft, orz_rl
from recipes.stage import run_stage, stage_outcome
from stepjax.train import config_check as cc
from stepjax.train import defaults

FORMATS = ("monologue", "dialogue")
LOG_FNS = ("compound_format", "compound_acc", "compound_all", "compound_diversity_proxy", "compound_coherency_proxy")


def schema() -> ml_collections.ConfigDict:
    """Every key this recipe understands, with its default."""
    base = lm_sft.schema()
    config = ml_collections.ConfigDict()
    config.recipe = "dialogue_reason"
    config.seed = 0
    config.format = "dialogue"
    config.model = base.model
    config.tokenizer = base.tokenizer
    config.data = dict(
        num_train=4000,  # pool records (each holds pool_size sub-problems)
        pool_size=4,
        sources=("add", "sort", "parity"),
        k_weights=(0.4, 0.2, 0.2, 0.2),  # P(k = 1), P(k = 2), ...: the k = 1 / k > 1 mix of training
        min_digits=1,
        max_digits=2,
        min_bits=3,
        max_bits=5,
        slip=0.1,  # warm-start trace noise (stepjax.data.compound_qa.TraceNoise)
        carry_drop=0.3,
        hesitation=0.1,
        box_error=0.03,
        budget_base=64,  # new-token budget of a k-problem prompt: budget_base + budget_per_problem * k
        budget_per_problem=64,
        seq_len=448,
        packing=True,
    )
    config.warm_start = dict(steps=1000, batch_size=16, learning_rate=3e-3, warmup_steps=30)
    rl = orz_rl.schema().rl.to_dict()
    del rl["max_new_tokens"]  # the budget of the largest k (data.budget_*)
    rl.update(
        iterations=100,
        prompts_per_iteration=16,
        samples_per_prompt=4,
        prompt_width=128,
        reward_fns=("compound_acc",),  # Acc(k); ("compound_all",) for 1[all k correct]
        log_fns=LOG_FNS,  # scored with weight 0: logged as reward/<name>, not optimised
        policy_minibatches=1,
        critic_minibatches=2,
        # Pilot runs on this task (replies of 80-300 tokens): 32-row rollouts with 2 policy steps at 3e-4 (ORZ tiny's
        # rate) degraded the warm-start model within 30 iterations (greedy Acc(1) 0.75 -> 0.50), whitened or not;
        # 64 rows, one step at 1e-4 and unwhitened A = R - V raised the sampled reward (0.68 -> 0.86).
        policy_learning_rate=1e-4,
        critic_learning_rate=1e-3,
        whiten_advantages=False,
        lr_schedule="warmup_constant",  # the measured runs (README) used a constant rate after warm-up
        end_lr_ratio=0.0,
    )
    config.rl = rl
    config.eval = dict(num_per_k=48, ks=(1, 2, 3, 4), every=50, sample=True)
    config.compare = dict(seeds=(), formats=())
    config.train = dict(log_every=10, nonfinite="error")
    config.checkpoint = defaults.checkpoint_section()
    config.checkpoint.every = 50
    config.mesh = defaults.mesh_section()
    config.sharding = defaults.sharding_section()
    config.distributed = defaults.distributed_section()
    return config


def _k_max(config: ml_collections.ConfigDict) -> int:
    return max(len(config.data.k_weights), max(config.eval.ks))


def _budget(config: ml_collections.ConfigDict) -> tuple[int, int]:
    return config.data.budget_base, config.data.budget_per_problem


def _max_prompt_tokens(config: ml_collections.ConfigDict) -> int:
    """Tokens (bytes, plus BOS) of the longest possible prompt: k_max sub-problems whose kinds cycle through the
    sources (``make_compound_records``), so each kind appears at most ``ceil(k_max / len(sources))`` times."""
    from stepjax.data.compound_qa import compound_prompt

    d = config.data
    longest = {
        "add": "9" * d.max_digits + "+" + "9" * d.max_digits,
        "sort": "sort 999",
        "parity": "p" * (7 + d.max_bits),
    }
    k, kinds = _k_max(config), sorted((longest[s] for s in d.sources), key=len, reverse=True)
    repeats = -(-k // len(kinds))
    worst = [text for text in kinds for _ in range(repeats)][:k]
    return len(compound_prompt(worst).encode()) + 1


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks keys, types, choices and cross-field constraints; raises ``ConfigError`` naming the key."""
    from stepjax.data.compound_qa import SOURCES, length_budget

    cc.check_against_schema(config, schema(), open_sections=defaults.LM_OPEN_SECTIONS)
    cc.check_choice(config, "config.format", FORMATS)
    cc.check_choice(config, "config.rl.algorithm", ("ppo", "grpo"))
    cc.check_choice(config, "config.rl.group_scale", ("group", "batch", "none"))
    cc.check_choice(config, "config.train.nonfinite", ("error", "skip"))
    cc.check_positive(
        config,
        "config.data.num_train",
        "config.data.pool_size",
        "config.data.seq_len",
        "config.warm_start.steps",
        "config.warm_start.batch_size",
        "config.warm_start.learning_rate",
        "config.rl.iterations",
        "config.rl.prompts_per_iteration",
        "config.rl.samples_per_prompt",
        "config.rl.prompt_width",
        "config.rl.policy_learning_rate",
        "config.eval.num_per_k",
        "config.eval.every",
    )
    d = config.data
    bad = [s for s in d.sources if s not in SOURCES]
    if bad or not d.sources:
        raise cc.ConfigError(f"'config.data.sources' {list(d.sources)}: expected a non-empty subset of {SOURCES}")
    weights = list(d.k_weights)
    if not weights or min(weights) < 0 or sum(weights) <= 0:
        raise cc.ConfigError(
            f"'config.data.k_weights' {weights}: expected weights >= 0 of k = 1, 2, ... with a sum > 0"
        )
    if _k_max(config) > d.pool_size:
        raise cc.ConfigError(
            f"'config.data.k_weights' / 'config.eval.ks' reach k = {_k_max(config)} but 'config.data.pool_size' is "
            f"{d.pool_size}"
        )
    if min(config.eval.ks) < 1:
        raise cc.ConfigError(f"'config.eval.ks' {list(config.eval.ks)}: every k must be >= 1")
    for key in ("slip", "carry_drop", "hesitation", "box_error"):
        if not 0.0 <= d[key] <= 1.0:
            raise cc.ConfigError(f"'config.data.{key}' ({d[key]}) must be in [0, 1]")
    if not (1 <= d.min_digits <= d.max_digits and 1 <= d.min_bits <= d.max_bits):
        raise cc.ConfigError("'config.data.min_digits/max_digits' and 'min_bits/max_bits' must satisfy 1 <= min <= max")
    if d.budget_base < 1 or d.budget_per_problem < 0:
        raise cc.ConfigError("'config.data.budget_base' must be >= 1 and 'config.data.budget_per_problem' >= 0")
    rows = config.rl.prompts_per_iteration * config.rl.samples_per_prompt
    for key in ("policy_minibatches", "critic_minibatches"):
        if rows % config.rl[key]:
            raise cc.ConfigError(
                f"'config.rl.{key}' ({config.rl[key]}) must divide the rollout's {rows} rows "
                "(prompts_per_iteration x samples_per_prompt)"
            )
    need = _max_prompt_tokens(config)
    if config.rl.prompt_width < need:
        raise cc.ConfigError(
            f"'config.rl.prompt_width' ({config.rl.prompt_width}) is below the longest prompt ({need})"
        )
    longest = config.rl.prompt_width + length_budget(_k_max(config), *_budget(config))
    for key, limit in (("config.data.seq_len", d.seq_len), ("config.model.max_seq_len", config.model.max_seq_len)):
        if limit < longest:
            raise cc.ConfigError(
                f"'{key}' ({limit}) is below prompt_width + the budget of k = {_k_max(config)} ({longest})"
            )
    from stepjax.rl import REWARDS, compound_rewards

    del compound_rewards  # imported to register the compound rewards

    for key in ("reward_fns", "log_fns"):
        for name in config.rl[key]:
            if name not in REWARDS.names():
                raise cc.ConfigError(f"'config.rl.{key}': unknown reward {name!r}; known: {REWARDS.names()}")
    if bool(config.compare.seeds) != bool(config.compare.formats):
        raise cc.ConfigError("'config.compare.seeds' and 'config.compare.formats' must be set together")
    for fmt in config.compare.formats:
        if fmt not in FORMATS:
            raise cc.ConfigError(f"'config.compare.formats': {fmt!r} is not one of {FORMATS}")
    lm_sft.validate(_warm_start_config(config))  # also the model section (same keys, same messages)


# --------------------------------------------------------------------------------------------------------- data


def _records(config: ml_collections.ConfigDict, split: str, n: int, seed: int | None = None) -> list[dict]:
    from stepjax.data.compound_qa import make_compound_records

    d = config.data
    return make_compound_records(
        split,
        n,
        config.seed if seed is None else seed,
        pool_size=d.pool_size,
        sources=tuple(d.sources),
        digits=(d.min_digits, d.max_digits),
        bits=(d.min_bits, d.max_bits),
    )


def _eval_views(config: ml_collections.ConfigDict) -> list[dict]:
    """Held-out views, ``eval.num_per_k`` per k (fixed across evaluations and seeds of one data setting)."""
    from stepjax.data.compound_qa import fixed_k_views

    pool = _records(config, "test", config.eval.num_per_k, seed=0)
    return [
        view
        for k in config.eval.ks
        for view in fixed_k_views(pool, k, config.format, seed=1000, budget=_budget(config))
    ]


# --------------------------------------------------------------------------------------------------- warm start


def _warm_start_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The ``lm_sft`` config of stage 1 (its records come from ``_warm_start_source``, not ``data.source``)."""
    sft = lm_sft.stage_config(config)
    sft.data.update(seq_len=config.data.seq_len, packing=config.data.packing)
    sft.train.nonfinite = config.train.nonfinite
    # lm_sft's optimizer defaults already carry weight_decay 0.01 and b2 0.98.
    return sft


def _warm_start_source(config: ml_collections.ConfigDict) -> Any:
    """Noisy Compound-QA traces of the training pool, k and order resampled every epoch (``CompoundQASource``)."""
    from stepjax.data.compound_qa import CompoundQASource, TraceNoise

    d, w = config.data, config.warm_start
    records = _records(config, "train", d.num_train)
    noise = TraceNoise(slip=d.slip, carry_drop=d.carry_drop, hesitation=d.hesitation, box_error=d.box_error)
    epochs = 1 + w.steps * w.batch_size // len(records)  # every epoch renders each pool record anew
    return CompoundQASource(
        records,
        fmt=config.format,
        seed=config.seed,
        epochs=epochs,
        k_weights=tuple(d.k_weights),
        budget=_budget(config),
        noise=noise,
    )


def warm_start(config: ml_collections.ConfigDict, workdir: str) -> tuple[int, Any, Any]:
    """SFT on noisy Compound-QA traces (``lm_sft.train``, no held-out eval); ``(status, graphdef, TrainState)``, the
    state None after a SIGTERM stop (status 0) or a failure."""
    print(f"dialogue_reason warm start ({config.format}): {config.warm_start.steps} steps")
    return lm_sft.train_unless_preempted(
        _warm_start_config(config), workdir, train_source=_warm_start_source(config), eval_records=[]
    )


# ---------------------------------------------------------------------------------------------------------- RL


def run(config: ml_collections.ConfigDict, workdir: str) -> int:
    """One run (or, with ``compare.seeds``, every (format, seed) run and the comparison); the exit status."""
    if config.compare.seeds:
        from recipes import dialogue_reason_report

        for fmt in config.compare.formats:
            for seed in config.compare.seeds:
                sub = config.copy_and_resolve_references()
                sub.seed, sub.format = int(seed), fmt
                sub.compare.seeds, sub.compare.formats = (), ()
                subdir = os.path.join(workdir, f"{fmt}_seed{seed}")
                if os.path.exists(os.path.join(subdir, "summary.json")):
                    print(f"dialogue_reason: {subdir} is done; keeping it")
                    continue
                status = run(sub, subdir)
                if status or not os.path.exists(os.path.join(subdir, "summary.json")):  # failed or preempted: stop
                    return status
        dialogue_reason_report.write_report(workdir)
        return 0
    return _run_one(config, workdir)


def _run_one(config: ml_collections.ConfigDict, workdir: str) -> int:
    import time

    import jax

    from stepjax.data.compound_qa import CompoundPromptIterator, length_budget
    from stepjax.rl import compound_rewards  # noqa: F401  (registers the compound rewards)
    from stepjax.rl.trainer import make_rl_step
    from stepjax.sampling import SamplingConfig
    from stepjax.train import plot_metrics

    started = time.time()
    status, _, sft_state = warm_start(config, os.path.join(workdir, "warm_start"))
    if sft_state is None:
        return status
    tokenizer = lm_sft._tokenizer(config)
    model_cfg = lm_sft.model_config(config, tokenizer.vocab_size)
    r = config.rl
    setup = orz_rl.init_rl(config, model_cfg, sft_state.params)
    state, policy_graphdef = setup.state, setup.policy_graphdef
    max_new = length_budget(_k_max(config), *_budget(config))
    sampling = SamplingConfig(
        max_new_tokens=max_new,
        temperature=r.temperature,
        num_samples=r.samples_per_prompt,
        stop_tokens=(tokenizer.eos_id,),
        pad_id=tokenizer.pad_id,
    )
    log_fns = tuple(n for n in r.log_fns if n not in r.reward_fns)
    rl_cfg = dataclasses.replace(
        orz_rl._rl_config(config),
        reward_fns=tuple(r.reward_fns) + log_fns,
        reward_weights=(1.0,) * len(r.reward_fns) + (0.0,) * len(log_fns),
    )
    rl_step = make_rl_step(
        rl_cfg,
        sampling,
        tokenizer,
        policy_graphdef,
        setup.policy_tx,
        critic_graphdef=setup.critic_graphdef,
        critic_tx=setup.critic_tx,
        policy_schedule=setup.policy_schedule,
    )
    prompts = CompoundPromptIterator(
        _records(config, "train", config.data.num_train),
        r.prompts_per_iteration,
        fmt=config.format,
        seed=config.seed,
        k_weights=tuple(config.data.k_weights),
        budget=_budget(config),
    )
    rl_dir = os.path.join(workdir, "rl")
    eval_fn = _make_eval(config, policy_graphdef, tokenizer, sampling, rl_dir)
    print(
        f"dialogue_reason ({config.format}): {r.algorithm} for {r.iterations} iterations of "
        f"{r.prompts_per_iteration} prompts x {r.samples_per_prompt} samples, <= {max_new} new tokens; "
        f"workdir {workdir}"
    )
    status, state = stage_outcome(
        lambda: run_stage(
            config,
            state,
            rl_step,
            prompts,
            rl_dir,
            total_steps=r.iterations,
            eval_fn=eval_fn,
            first_eval=lambda: eval_fn(state, 0),
        )
    )
    if state is None:
        return status
    if jax.process_index() == 0:
        from recipes import dialogue_reason_report

        metrics_path = os.path.join(rl_dir, "metrics.jsonl")
        plot_metrics(
            metrics_path,
            os.path.join(workdir, "rl_curve.png"),
            keys=("reward/mean", "reward/compound_format"),
            eval_keys=("eval/greedy_acc", "eval/sample_acc"),
            title=f"dialogue_reason ({config.format}): reward and held-out Acc",
            log_scale=False,
        )
        summary = dialogue_reason_report.write_run_summary(config, workdir, wall_s=time.time() - started)
        base, final = summary["base"], summary["trained"]
        cells = ", ".join(
            f"k={k} {base[f'greedy_acc_k{k}']:.2f}->{final[f'greedy_acc_k{k}']:.2f}" for k in config.eval.ks
        )
        print(f"done: iteration {int(jax.device_get(state.step))}; greedy Acc(k) {cells}; workdir {workdir}")
    return 0


def _make_eval(config: ml_collections.ConfigDict, graphdef, tokenizer, sampling, out_dir: str):
    """``eval_fn(state, step)``: Acc(k), AllAcc(k), format rate and proxies on the held-out views, greedy and (with
    ``eval.sample``) one temperature-``rl.temperature`` sample; replies go to ``out_dir/eval_samples.jsonl``."""
    import jax

    from stepjax.evals.compound_accuracy import compound_accuracy

    views = _eval_views(config)
    modes = [("greedy", sampling.replace(num_samples=1, greedy=True))]
    if config.eval.sample:
        modes.append(("sample", sampling.replace(num_samples=1)))

    def eval_fn(state, step: int) -> dict[str, float]:
        params = (state.policy.params, state.policy.extra)
        out: dict[str, float] = {}
        for mode, cfg in modes:
            key = jax.random.fold_in(jax.random.key(4321), step)
            metrics, completions = compound_accuracy(graphdef, params, views, tokenizer, cfg, key)
            out.update({f"{mode}_{k}": v for k, v in metrics.items()})
            if jax.process_index() == 0:
                os.makedirs(out_dir, exist_ok=True)
                with open(os.path.join(out_dir, "eval_samples.jsonl"), "a") as f:
                    for view, text in zip(views, completions, strict=True):
                        row = {"step": step, "mode": mode, "k": view["k"], "prompt": view["prompt"]}
                        row.update(completion=text, answers=view["answers"])
                        f.write(json.dumps(row) + "\n")
        cells = " ".join(f"k{k}={out.get(f'greedy_acc_k{k}', float('nan')):.2f}" for k in config.eval.ks)
        print(f"iteration {step}: held-out greedy Acc(k) {cells}; format {out.get('greedy_format_rate', 0):.2f}")
        return out

    return eval_fn

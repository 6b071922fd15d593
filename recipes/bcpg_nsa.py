"""Recipe ``bcpg_nsa``: offline policy gradient from one fixed sampled dataset — RFT, BCPG and BCPG-NSA ("Unearthing
Gems from Stones", llm-rl.md §4) — on synthetic long chains of thought ``a₁+…+a_n``.

Stage 1 (``warm_start``): ``pi_ref`` is the ``lm_sft`` recipe on scripted chains (``stepjax.data.long_cot``: each
addition wrong with probability ``data.error_prob``; after an error, a ``wait, ...`` recomputation with probability
``data.cessation_prob`` (error cessation), else the chain continues on the wrong value (error propagation); optionally
a systematic habit, ``data.habit_prob``: at a term >= 10 the step drops its tens), in ``<workdir>/warm_start``; its data
in ``sft_train.jsonl``.
Stage 2 (``offline``): ``offline.samples_per_prompt`` (G) temperature-``offline.temperature`` samples of ``pi_ref``
for ``offline.num_questions`` train questions, scored by their answer; each negative is split into its steps, judged
by the programmatic EP/EC judge, and labelled ``I = AND`` of ``len(offline.judge_flip_probs)`` simulated judges
that flip the true label with those probabilities; with ``pi_ref``'s per-token log-probs this is the record format
of §4.3, written once to ``<workdir>/offline_data.jsonl`` (``stepjax.rl.offline``).
Stage 3: from ``pi_ref`` and that one dataset, each of ``methods`` trains for every seed in ``train.seeds`` in
``<workdir>/runs/<method>_s<seed>``: ``rft`` (SFT on the positives, ``config.rft``), ``bcpg`` (beta = 1) and ``nsa``
(one run per beta in ``policy.nsa_betas``), all with ``config.policy`` and ``tau = policy.tau``. With
``offline.iterations > 1`` each run then resamples from its own policy, relabels, sets ``pi_ref <- current`` and
trains again (``iter<k>/`` subfolders).

Before the runs (``diagnostics.gradient_agreement``): the split-half agreement of the methods' first-step gradients
at ``pi_ref`` on the dataset (``recipes/bcpg_nsa_gradients.py``; ``gradient_agreement.json``).
Scores (held-out questions, before training and at the end): ``eval/accuracy`` (mean answer reward of
``eval.samples_per_prompt`` samples per question at temperature ``eval.temperature``, default 1),
``eval/greedy_accuracy``, ``eval/format_rate``, and on the dataset's negatives the mean per-token log-likelihood of
judge-accepted correct steps (``eval/correct_step_logp``), of truly correct steps and of wrong steps; how far the
policy moved from the initial ``pi_ref`` on its own sampled answers (``eval/log_ratio_to_ref``: mean token
log pi - log pi_ref, the per-token KL at T = 1) and their mean token NLL (``eval/sample_nll``). Outputs:
``summary.json`` (per run and mean/std over seeds), ``bcpg_nsa.png``. A rerun with the same workdir reuses every
finished stage; one that changes the eval settings of runs already scored there is refused (their figures would
not be comparable).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import ml_collections

from recipes import lm_sft
from stepjax.train import config_check as cc
from stepjax.train import defaults

METHODS = ("rft", "bcpg", "nsa")


def schema() -> ml_collections.ConfigDict:
    """Every key this recipe understands, with its default."""
    base = lm_sft.schema()
    config = ml_collections.ConfigDict()
    config.recipe = "bcpg_nsa"
    config.seed = 0
    config.model = base.model
    config.tokenizer = base.tokenizer
    config.data = dict(
        min_terms=3,
        max_terms=5,
        max_value=20,
        error_prob=0.15,  # per addition, in the scripted pi_ref chains
        cessation_prob=0.5,  # after an own error: a "wait, ..." recomputation (else the error propagates)
        late_cessation_prob=0.0,  # after a propagated step
        restart_prob=0.0,  # a reflection written as a restart from scratch
        habit_prob=0.0,  # systematic habit: at a term >= 10, drop its tens with this probability (an own error)
        separator="\n",
        num_sft_chains=20_000,
        seq_len=160,
    )
    config.warm_start = dict(steps=600, batch_size=64, learning_rate=3e-3, warmup_steps=50, eval_examples=100)
    config.offline = dict(
        num_questions=512,
        samples_per_prompt=8,  # G
        temperature=1.0,
        max_new_tokens=128,
        prompt_width=28,
        prompts_per_batch=256,
        reward_fns=("orz_math",),
        judge_flip_probs=(0.1, 0.1),  # one entry per simulated judge; () = the true labels
        drop_uniform_groups=True,  # all-right / all-wrong groups have zero advantage (the paper drops them)
        iterations=1,
    )
    config.methods = ("rft", "bcpg", "nsa")
    config.policy = dict(  # BCPG and NSA
        steps=150,
        batch_size=64,
        learning_rate=1e-4,
        warmup_steps=10,
        grad_clip_norm=1.0,
        tau=1e-3,
        nsa_betas=(0.5,),
        aggregation="sequence_mean",
    )
    config.rft = dict(steps=150, batch_size=64, learning_rate=1e-4, warmup_steps=10, grad_clip_norm=1.0)
    # every 0: before and after training only
    config.eval = dict(num_examples=200, samples_per_prompt=4, temperature=1.0, every=0)
    config.train = dict(seeds=(0,), log_every=25, nonfinite="error")
    # Split-half agreement of the methods' first-step gradients at pi_ref (recipes/bcpg_nsa_gradients.py).
    config.diagnostics = dict(gradient_agreement=True, gradient_folds=8)
    config.checkpoint = defaults.checkpoint_section()
    config.checkpoint.every = 0
    config.checkpoint.keep = 1
    config.mesh = defaults.mesh_section()
    config.sharding = defaults.sharding_section()
    config.distributed = defaults.distributed_section()
    return config


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks keys, types, choices and cross-field constraints; raises ``ConfigError`` naming the key."""
    cc.check_against_schema(config, schema(), open_sections=defaults.LM_OPEN_SECTIONS)
    cc.check_choice(config, "config.train.nonfinite", ("error", "skip"))
    cc.check_choice(config, "config.policy.aggregation", ("sequence_mean", "token_mean"))
    cc.check_positive(
        config,
        "config.data.min_terms",
        "config.data.max_value",
        "config.data.num_sft_chains",
        "config.offline.num_questions",
        "config.offline.samples_per_prompt",
        "config.offline.max_new_tokens",
        "config.offline.prompt_width",
        "config.offline.prompts_per_batch",
        "config.offline.iterations",
        "config.policy.steps",
        "config.policy.batch_size",
        "config.policy.learning_rate",
        "config.rft.steps",
        "config.rft.batch_size",
        "config.rft.learning_rate",
        "config.eval.num_examples",
        "config.eval.samples_per_prompt",
    )
    cc.check_positive(
        config,
        "config.offline.temperature",
        "config.eval.temperature",
        "config.policy.tau",
        "config.eval.every",
        allow_zero=True,
    )
    d = config.data
    if not 2 <= d.min_terms <= d.max_terms:
        raise cc.ConfigError(
            f"'config.data.min_terms' ({d.min_terms}) and 'max_terms' ({d.max_terms}): need 2 <= min_terms <= max_terms"
        )
    for key in ("error_prob", "cessation_prob", "late_cessation_prob", "restart_prob", "habit_prob"):
        if not 0.0 <= d[key] <= 1.0:
            raise cc.ConfigError(f"'config.data.{key}' must be in [0, 1], got {d[key]}")
    if not d.separator:
        raise cc.ConfigError("'config.data.separator' must be a non-empty string")
    if any(not 0.0 <= q <= 1.0 for q in config.offline.judge_flip_probs):
        raise cc.ConfigError(
            f"'config.offline.judge_flip_probs' must be in [0, 1], got {config.offline.judge_flip_probs}"
        )
    folds = config.diagnostics.gradient_folds
    if folds < 2 or folds % 2:
        raise cc.ConfigError(f"'config.diagnostics.gradient_folds' must be an even number >= 2, got {folds}")
    if config.offline.samples_per_prompt < 2:
        raise cc.ConfigError("'config.offline.samples_per_prompt' must be >= 2: r - r_bar needs a group")
    if not config.methods or any(m not in METHODS for m in config.methods):
        raise cc.ConfigError(f"'config.methods' is {tuple(config.methods)}; expected a non-empty list from {METHODS}")
    if "nsa" in config.methods and not config.policy.nsa_betas:
        raise cc.ConfigError("'config.policy.nsa_betas' is empty but 'config.methods' has 'nsa'")
    if any(not -1.0 <= b <= 1.0 for b in config.policy.nsa_betas):
        raise cc.ConfigError(f"'config.policy.nsa_betas' must lie in [-1, 1], got {config.policy.nsa_betas}")
    if not config.train.seeds:
        raise cc.ConfigError("'config.train.seeds' is empty; expected at least one training seed")
    width = config.offline.prompt_width + config.offline.max_new_tokens
    if width > config.model.max_seq_len:
        raise cc.ConfigError(
            f"'config.offline.prompt_width' + 'config.offline.max_new_tokens' ({width}) exceeds "
            f"'config.model.max_seq_len' ({config.model.max_seq_len})"
        )
    from stepjax.rl import REWARDS

    for name in config.offline.reward_fns:
        if name not in REWARDS.names():
            raise cc.ConfigError(f"'config.offline.reward_fns': unknown reward {name!r}; known: {REWARDS.names()}")
    lm_sft.validate(_warm_start_config(config, None))


def _warm_start_config(config: ml_collections.ConfigDict, paths: tuple[str, str] | None) -> ml_collections.ConfigDict:
    """The ``lm_sft`` config of stage 1 (``paths``: the SFT JSONL files; None while validating, before they exist)."""
    sft = lm_sft.stage_config(config)
    if paths is None:
        sft.data.update(source="arithmetic", seq_len=config.data.seq_len)
    else:
        sft.data.update(source="jsonl", path=paths[0], eval_path=paths[1], seq_len=config.data.seq_len)
    sft.eval.update(num_examples=config.warm_start.eval_examples, max_new_tokens=config.offline.max_new_tokens)
    return sft


def planned_runs(config: ml_collections.ConfigDict) -> list[tuple[str, str, float]]:
    """``(run name, method, beta)`` in order: rft, bcpg (beta 1), one nsa run per beta."""
    from recipes.bcpg_nsa_runs import run_name

    runs = []
    for method in config.methods:
        betas = config.policy.nsa_betas if method == "nsa" else (1.0,)
        runs += [(run_name(method, b), method, float(b)) for b in betas]
    return runs


# --------------------------------------------------------------------------------------------------------- running


def run(config: ml_collections.ConfigDict, workdir: str) -> int:
    """Warm start, offline dataset, the methods' runs, summary and plot; returns the process exit status."""
    import time

    import jax

    from recipes import bcpg_nsa_runs as parts
    from recipes.bcpg_nsa_gradients import first_step_agreement
    from recipes.stage import stage_outcome
    from stepjax.rl.offline import run_offline_iterations
    from stepjax.sharding import make_mesh, normalize_rules

    t_start = time.perf_counter()
    check_run_eval_settings(config, workdir)
    o = config.offline
    held_out = parts.questions(config, "test", config.eval.num_examples)
    train_questions = parts.questions(config, "offline", o.num_questions, {r["question"] for r in held_out})
    paths = parts.write_sft_data(config, workdir, held_out)
    status, graphdef, sft_state = lm_sft.train_unless_preempted(
        _warm_start_config(config, paths), os.path.join(workdir, "warm_start")
    )
    if sft_state is None:
        return status
    t_sft = time.perf_counter()
    tokenizer = lm_sft._tokenizer(config)
    model_cfg = lm_sft.model_config(config, tokenizer.vocab_size)
    env = dict(mesh=make_mesh(config.mesh.shape.to_dict()), rules=normalize_rules(config.sharding.rules))
    env["model_cfg"] = model_cfg
    reference = (sft_state.params, sft_state.extra)
    records, stats = parts.offline_dataset(
        config, os.path.join(workdir, "offline_data.jsonl"), graphdef, reference, tokenizer, train_questions, salt=0
    )
    t_data = time.perf_counter()
    logp_fn = parts.token_logp_fn(graphdef)
    bcpg_rows = parts.method_rows(config, tokenizer, records, "bcpg")
    analysis = parts.analysis_rows(bcpg_rows)
    timings: dict[str, float] = {"warm_start_s": t_sft - t_start, "offline_data_s": t_data - t_sft}
    agreement = None
    if config.diagnostics.gradient_agreement:
        try:
            agreement = first_step_agreement(config, workdir, graphdef, reference, bcpg_rows)
        except ValueError as err:  # fewer than 2 groups, or a method without gradient (e.g. only uniform groups)
            print(f"warning: first-step gradient agreement skipped: {err}", file=sys.stderr)
        timings["gradient_agreement_s"] = time.perf_counter() - t_data
    results: dict[str, dict[str, Any]] = {}

    def all_runs() -> dict[str, dict[str, Any]]:
        for seed in config.train.seeds:
            base_eval = _reference_eval(
                config, workdir, graphdef, tokenizer, held_out, analysis, logp_fn, sft_state, seed
            )
            for name, method, beta in planned_runs(config):
                run_dir = os.path.join(workdir, "runs", f"{name}_s{seed}")
                _record_run_eval_settings(config, run_dir)
                t0 = time.perf_counter()

                def sample(reference_state, k, run_dir=run_dir, seed=seed):
                    if k == 0:
                        return records
                    path = os.path.join(run_dir, f"offline_iter{k}.jsonl")
                    return parts.offline_dataset(
                        config, path, graphdef, reference_state, tokenizer, train_questions, salt=100 * k + seed
                    )[0]

                def train(policy, data, k, run_dir=run_dir, method=method, beta=beta, seed=seed):
                    rows = parts.method_rows(config, tokenizer, data, method)
                    eval_fn = parts.make_eval(
                        config, graphdef, tokenizer, held_out, analysis, logp_fn, seed, reference=reference
                    )
                    sub = run_dir if config.offline.iterations == 1 else os.path.join(run_dir, f"iter{k}")
                    first = base_eval if k == 0 else None
                    state = parts.train_method(config, env, policy, rows, sub, method, beta, seed, eval_fn, first)
                    return (state.params, state.extra)

                run_offline_iterations(reference, iterations=o.iterations, sample=sample, train=train)
                timings[f"{name}_s{seed}_s"] = time.perf_counter() - t0
                results[f"{name}_s{seed}"] = _run_result(run_dir, config.offline.iterations)
        return results

    status, finished = stage_outcome(all_runs)  # SIGTERM: 0 after the checkpoint; a non-finite loss: 3
    if finished is None:
        return status
    if jax.process_index() == 0:
        _finish(config, workdir, stats, results, timings, agreement)
    return 0


def _eval_settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """What the held-out scores depend on besides the weights (``eval.every`` only sets when they are taken)."""
    evaluation = {k: v for k, v in config.eval.to_dict().items() if k != "every"}
    return {"eval": evaluation, "max_new_tokens": config.offline.max_new_tokens}


RUN_EVAL_SETTINGS = "eval_settings.json"


def check_run_eval_settings(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Refuses, before any work, a rerun whose eval settings differ from those a finished or started run of this
    workdir was scored with: such a run resumes at its last step without re-scoring, and its old figures would sit
    beside pi_ref's new ones. Raises ``ConfigError`` naming the run folder and both settings."""
    want = json.loads(json.dumps(_eval_settings(config)))  # tuples -> lists, as read back from JSON
    for seed in config.train.seeds:
        for name, _, _ in planned_runs(config):
            path = os.path.join(workdir, "runs", f"{name}_s{seed}", RUN_EVAL_SETTINGS)
            if not os.path.isfile(path):
                continue
            with open(path) as f:
                have = json.load(f)
            if have != want:
                raise cc.ConfigError(
                    f"{os.path.dirname(path)} was scored with eval settings {have}, but this run asks for {want}; "
                    "its figures would not be comparable. Use another workdir (link warm_start/ and "
                    "offline_data.jsonl* into it to reuse them) or delete that run folder"
                )


def _record_run_eval_settings(config: ml_collections.ConfigDict, run_dir: str) -> None:
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, RUN_EVAL_SETTINGS), "w") as f:
        json.dump(_eval_settings(config), f, indent=1)


REFERENCE_EVAL_VERSION = 2  # 2: eval/log_ratio_to_ref and eval/sample_nll


def _reference_eval(config, workdir, graphdef, tokenizer, held_out, analysis, logp_fn, sft_state, seed):
    """The held-out scores of ``pi_ref`` (every run's step 0), cached in ``<workdir>/reference_eval_s<seed>.json``."""
    from recipes import bcpg_nsa_runs as parts
    from recipes.stage import params_fingerprint

    path = os.path.join(workdir, f"reference_eval_s{seed}.json")
    # The cache is valid only for the same pi_ref weights and eval settings (a rerun may change eval.temperature).
    settings = {
        "reference": params_fingerprint(sft_state.params),
        "metrics": REFERENCE_EVAL_VERSION,  # a cache from before a metric was added is re-scored
        **_eval_settings(config),
    }
    if os.path.isfile(path):
        with open(path) as f:
            cached = json.load(f)
        if cached.get("settings") == settings:
            return cached["scores"]
        print(f"reference eval: {path} was made with other weights or eval settings; re-scoring pi_ref")
    reference = (sft_state.params, sft_state.extra)
    scores = parts.make_eval(config, graphdef, tokenizer, held_out, analysis, logp_fn, seed, reference)(sft_state, 0)
    with open(path, "w") as f:
        json.dump({"settings": settings, "scores": scores}, f, indent=1)
    return scores


def _run_result(run_dir: str, iterations: int) -> dict[str, Any]:
    """First and last eval records of a run (over all its iterations), and its path: ``[log-ratio to pi_ref,
    accuracy]`` at every eval, in order."""
    from stepjax.train import read_metrics

    dirs = [run_dir] if iterations == 1 else [os.path.join(run_dir, f"iter{k}") for k in range(iterations)]
    evals = [r for d in dirs for r in read_metrics(os.path.join(d, "metrics.jsonl")) if "eval/accuracy" in r]
    path = [[_number(r.get("eval/log_ratio_to_ref")), _number(r["eval/accuracy"])] for r in evals]
    return {"first": evals[0] if evals else {}, "last": evals[-1] if evals else {}, "path": path}


SUMMARY_KEYS = (
    "accuracy",
    "greedy_accuracy",
    "format_rate",
    "correct_step_logp",
    "true_correct_step_logp",
    "error_step_logp",
    "log_ratio_to_ref",
    "sample_nll",
)


def _number(value: Any) -> float:
    """A metric value as a float (``metrics.jsonl`` stores NaN as null)."""
    return float("nan") if value is None else float(value)


def _finish(
    config, workdir: str, stats: dict, results: dict[str, dict], timings: dict[str, float], agreement: dict | None
) -> None:
    """``summary.json`` (dataset stats; per run before/after; per method mean and std over seeds; wall times; the
    first-step gradient agreement when computed), the comparison figure, and one line per method."""
    import numpy as np

    seeds = list(config.train.seeds)
    methods: dict[str, dict[str, Any]] = {}
    for name, _, _ in planned_runs(config):
        per_seed = {s: results[f"{name}_s{s}"] for s in seeds}
        entry: dict[str, Any] = {}
        for key in SUMMARY_KEYS:
            after = [_number(per_seed[s]["last"].get(f"eval/{key}")) for s in seeds]
            before = [_number(per_seed[s]["first"].get(f"eval/{key}")) for s in seeds]
            entry[key] = {"before": before, "after": after, "mean": float(np.mean(after)), "std": float(np.std(after))}
        entry["path"] = {str(s): per_seed[s]["path"] for s in seeds}  # [log-ratio to pi_ref, accuracy] per eval
        methods[name] = entry
    summary = {"dataset": stats, "seeds": seeds, "methods": methods, "wall_seconds": timings}
    if agreement is not None:
        summary["first_step_gradients"] = agreement
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    png = _plot(workdir, methods, config.eval.temperature)
    for name, entry in methods.items():
        acc, greedy, lik = entry["accuracy"], entry["greedy_accuracy"], entry["correct_step_logp"]
        print(
            f"{name:>10}: held-out accuracy (T={config.eval.temperature:g}) {np.mean(acc['before']):.3f} -> "
            f"{acc['mean']:.3f} ± {acc['std']:.3f}"
            f" (seeds {', '.join(f'{v:.3f}' for v in acc['after'])}), greedy {greedy['mean']:.3f}, correct-step "
            f"log-lik {np.mean(lik['before']):.4f} -> {lik['mean']:.4f}, log-ratio to pi_ref "
            f"{entry['log_ratio_to_ref']['mean']:.4f}/token"
        )
    print(f"done: summary {os.path.join(workdir, 'summary.json')}, figure {png}")


def _mean_path(per_seed: dict[str, list]) -> Any:
    """``[evals, 2]`` mean over seeds of a method's ``[log-ratio, accuracy]`` path (seeds share eval steps; the
    shortest path sets the length)."""
    import numpy as np

    n = min((len(p) for p in per_seed.values()), default=0)
    if n == 0:
        return np.zeros((0, 2))
    return np.mean([np.asarray(p[:n], np.float64) for p in per_seed.values()], axis=0)


def _plot(workdir: str, methods: dict[str, dict], temperature: float) -> str:
    """Bars of held-out accuracy (mean ± std over seeds, the reference as a line) and of the correct-step
    log-likelihood change per method; with evals along the way (``eval.every``), accuracy against the log-ratio to
    pi_ref per method (mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(methods)
    paths = {n: _mean_path(methods[n]["path"]) for n in names}
    with_paths = any(len(p) > 2 for p in paths.values())  # evals along the way (eval.every > 0)
    fig, axes = plt.subplots(1, 3 if with_paths else 2, figsize=(15 if with_paths else 10, 4), dpi=100)
    acc = [methods[n]["accuracy"] for n in names]
    axes[0].bar(names, [a["mean"] for a in acc], yerr=[a["std"] for a in acc], capsize=4, color="tab:blue")
    for i, a in enumerate(acc):  # one dot per seed
        axes[0].plot([i] * len(a["after"]), a["after"], "k.", markersize=5)
    axes[0].axhline(float(np.mean(acc[0]["before"])), color="gray", linestyle="--", label="pi_ref")
    axes[0].set_ylabel(f"held-out accuracy (T={temperature:g})")
    axes[0].legend()
    lo = min(a["mean"] - a["std"] for a in acc)
    axes[0].set_ylim(max(0.0, min(lo, float(np.mean(acc[0]["before"]))) - 0.05), None)
    for key, color in (("correct_step_logp", "tab:green"), ("error_step_logp", "tab:red")):
        delta = [methods[n][key]["mean"] - float(np.mean(methods[n][key]["before"])) for n in names]
        offset = -0.2 if key == "correct_step_logp" else 0.2
        axes[1].bar(np.arange(len(names)) + offset, delta, width=0.4, color=color, label=key.replace("_logp", ""))
    axes[1].set_xticks(np.arange(len(names)), names)
    axes[1].axhline(0.0, color="black", linewidth=0.8)
    axes[1].set_ylabel("change of mean token log-lik (negatives)")
    axes[1].legend(loc="lower left")
    if with_paths:  # accuracy against distance from pi_ref: compares methods at equal drift
        for n in names:
            axes[2].plot(paths[n][:, 0], paths[n][:, 1], "o-", markersize=3, label=n)
        axes[2].set_xlabel("log-ratio to pi_ref per token, own samples (KL at T=1)")
        axes[2].set_ylabel(f"held-out accuracy (T={temperature:g})")
        axes[2].legend()
    fig.suptitle("BCPG-NSA on long-CoT a1+...+an: one offline dataset from pi_ref")
    fig.tight_layout()
    out = os.path.join(workdir, "bcpg_nsa.png")
    fig.savefig(out)
    plt.close(fig)
    return out

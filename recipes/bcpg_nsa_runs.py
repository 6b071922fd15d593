"""Pieces of the ``bcpg_nsa`` recipe: the synthetic long-CoT data, the offline dataset stage, one training run of a
method (RFT, BCPG or NSA) from ``pi_ref`` on offline rows, and its evaluation.

Kept apart from ``recipes/bcpg_nsa.py`` (config schema, stage order, summary) so each file stays one concept.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import ml_collections
import numpy as np

ANALYSIS_MASKS = {
    "correct_step_logp": "step_mask",  # tokens of steps the judges accepted (I = 1) inside negatives
    "true_correct_step_logp": "true_step_mask",  # tokens of truly correct steps inside negatives
    "error_step_logp": "error_step_mask",  # tokens of truly wrong steps inside negatives
}


# ------------------------------------------------------------------------------------------------- long-CoT data


def chain_record(numbers, chain=None, separator: str = "\n") -> dict:
    """``{prompt, question, ground_truth[, response]}`` of one ``a₁+…+a_n`` question (a response when a chain is
    given)."""
    from stepjax.data.long_cot import long_cot_prompt, render_response

    question = "+".join(str(a) for a in numbers)
    record = {"prompt": long_cot_prompt(question), "question": question, "ground_truth": str(sum(numbers))}
    if chain is not None:
        record["response"] = render_response(chain, separator=separator)
    return record


def questions(config: ml_collections.ConfigDict, split: str, n: int, exclude: set[str] | None = None) -> list[dict]:
    """``n`` distinct question records of ``split`` (its own seeded stream; questions in ``exclude`` are skipped)."""
    from stepjax.data.long_cot import sample_numbers

    d = config.data
    stream = {"sft": 0, "offline": 1, "test": 2}[split]
    rng = np.random.default_rng([config.seed, stream])
    seen, out = set(exclude or ()), []
    for _ in range(50 * n + 1000):
        numbers = sample_numbers(rng, min_terms=d.min_terms, max_terms=d.max_terms, max_value=d.max_value)
        record = chain_record(numbers, separator=d.separator)
        if record["question"] not in seen:
            seen.add(record["question"])
            out.append(record)
            if len(out) == n:
                return out
    raise ValueError(
        f"only {len(out)} distinct {split} questions of {n} with min_terms={d.min_terms}, max_terms={d.max_terms}, "
        f"max_value={d.max_value}; raise 'config.data.max_value' or lower the question counts"
    )


def write_sft_data(config: ml_collections.ConfigDict, workdir: str, held_out: list[dict]) -> tuple[str, str]:
    """The scripted ``pi_ref`` behaviour as SFT JSONL (``data.num_sft_chains`` chains with errors, propagation and
    cessation) and the held-out questions as its eval file; returns ``(train_path, eval_path)``."""
    from stepjax.data.long_cot import sample_chain, sample_numbers

    d = config.data
    train_path, eval_path = os.path.join(workdir, "sft_train.jsonl"), os.path.join(workdir, "sft_eval.jsonl")
    if not os.path.isfile(train_path):
        os.makedirs(workdir, exist_ok=True)
        rng = np.random.default_rng([config.seed, 3])
        kinds: dict[str, int] = {}
        with open(train_path + ".tmp", "w") as f:
            for _ in range(d.num_sft_chains):
                numbers = sample_numbers(rng, min_terms=d.min_terms, max_terms=d.max_terms, max_value=d.max_value)
                chain = sample_chain(
                    rng,
                    numbers,
                    error_prob=d.error_prob,
                    cessation_prob=d.cessation_prob,
                    late_cessation_prob=d.late_cessation_prob,
                    restart_prob=d.restart_prob,
                    habit_prob=d.habit_prob,
                )
                kinds[chain.kind] = kinds.get(chain.kind, 0) + 1
                f.write(json.dumps(chain_record(numbers, chain, d.separator)) + "\n")
        os.replace(train_path + ".tmp", train_path)
        print(f"sft data: {d.num_sft_chains} scripted chains ({kinds}) in {train_path}")
    with open(eval_path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in held_out)
    return train_path, eval_path


# ------------------------------------------------------------------------------------------------ offline data


def offline_dataset(config, path: str, graphdef, reference, tokenizer, prompts: list[dict], *, salt: int):
    """The offline records at ``path``: read when a previous run wrote them from the same reference weights, else
    sampled from ``reference = (params, extra)``, labelled and written (with ``path + '.meta.json'``)."""
    import jax

    from recipes.stage import params_fingerprint
    from stepjax.rl.offline import ConsensusStepLabeller, sample_offline_records
    from stepjax.rl.offline_data import dataset_stats, read_offline_records, write_offline_records
    from stepjax.sampling import SamplingConfig

    o = config.offline
    meta_path = path + ".meta.json"
    meta = {
        "reference": params_fingerprint(reference[0]),
        "questions": [p["question"] for p in prompts[:3]] + [len(prompts)],
    }
    meta.update({k: o[k] for k in ("samples_per_prompt", "temperature", "max_new_tokens", "prompt_width")})
    meta.update(reward_fns=list(o.reward_fns), judge_flip_probs=list(o.judge_flip_probs), salt=salt)
    if os.path.isfile(path) and os.path.isfile(meta_path):
        with open(meta_path) as f:
            stored = json.load(f)
        if stored.get("meta") == meta:
            records = read_offline_records(path)
            print(f"offline data: {len(records)} records read from {path}")
            return records, stored["stats"]
        print(f"offline data: {path} was made from other weights or settings; resampling")
    t0 = time.perf_counter()
    sampling = SamplingConfig(
        max_new_tokens=o.max_new_tokens,
        temperature=o.temperature,
        num_samples=o.samples_per_prompt,
        stop_tokens=(tokenizer.eos_id,),
        pad_id=tokenizer.pad_id,
    )
    labeller = ConsensusStepLabeller(
        flip_probs=tuple(o.judge_flip_probs), separator=config.data.separator, seed=config.seed + salt
    )
    records, counts = sample_offline_records(
        graphdef,
        reference,
        prompts,
        tokenizer,
        sampling,
        jax.random.key(config.seed * 1000 + salt),
        labeller,
        prompt_width=o.prompt_width,
        prompts_per_batch=o.prompts_per_batch,
        reward_fns=tuple(o.reward_fns),
    )
    stats = dataset_stats(records)
    stats.update(unlabelled_negatives=len(counts.unlabelled), seconds=round(time.perf_counter() - t0, 1))
    write_offline_records(path, records)
    with open(meta_path, "w") as f:
        json.dump({"meta": meta, "stats": stats, "unlabelled": counts.unlabelled[:100]}, f, indent=1)
    print(f"offline data: {json.dumps(stats)} -> {path}")
    return records, stats


# -------------------------------------------------------------------------------------------------- one run


def run_name(method: str, beta: float | None) -> str:
    return method if method != "nsa" else f"nsa_b{beta:g}"


def method_rows(config, tokenizer, records, method: str) -> dict[str, np.ndarray]:
    """Rows of one method: RFT trains on the positive responses, BCPG/NSA on every response (uniform groups
    dropped when ``offline.drop_uniform_groups``: their advantages are 0)."""
    from stepjax.rl.offline_data import encode_offline_rows

    width = config.offline.prompt_width + config.offline.max_new_tokens
    drop = config.offline.drop_uniform_groups
    return encode_offline_rows(tokenizer, records, width, drop_uniform_groups=drop, positives_only=method == "rft")


def analysis_rows(rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The negative responses of BCPG rows (where the correct-/error-step masks live)."""
    keep = rows["rewards"] <= 0
    return {k: v[keep] for k, v in rows.items()}


def token_logp_fn(graphdef):
    """``fn(params, extra, inputs, positions, targets) -> [B, L]`` per-token log-probs, jitted."""
    import jax

    from stepjax.objectives import token_log_probs
    from stepjax.train import merge_model

    @jax.jit
    def fn(params, extra, inputs, positions, targets):
        return token_log_probs(merge_model(graphdef, params, extra)(inputs, positions), targets)

    return fn


def masked_log_likelihoods(logp_fn, model_state, rows: dict[str, np.ndarray], batch_size: int = 128):
    """Mean per-token log-prob of the policy over each ``ANALYSIS_MASKS`` mask (NaN when a mask is empty)."""
    sums = dict.fromkeys(ANALYSIS_MASKS, 0.0)
    counts = dict.fromkeys(ANALYSIS_MASKS, 0.0)
    n = rows["inputs"].shape[0]
    for start in range(0, n, batch_size):
        idx = slice(start, start + batch_size)
        logp = np.asarray(logp_fn(*model_state, rows["inputs"][idx], rows["positions"][idx], rows["targets"][idx]))
        for name, key in ANALYSIS_MASKS.items():
            sums[name] += float((logp * rows[key][idx]).sum())
            counts[name] += float(rows[key][idx].sum())
    return {k: sums[k] / counts[k] if counts[k] else float("nan") for k in ANALYSIS_MASKS}


def sample_log_ratios(logp_fn, policy, reference, rows: dict[str, np.ndarray], batch_size: int = 128):
    """How far a policy moved from ``reference``, on its own sampled answers ``rows`` (``inputs``, ``targets``,
    ``positions``, ``loss_mask``): ``{"log_ratio_to_ref": mean over answer tokens of log pi - log pi_ref (at T = 1
    sampling: the per-token KL(pi || pi_ref)), "sample_nll": mean -log pi (at T = 1: the per-token entropy)}``."""
    ratio = nll = count = 0.0
    for start in range(0, rows["inputs"].shape[0], batch_size):
        idx = slice(start, start + batch_size)
        args = (rows["inputs"][idx], rows["positions"][idx], rows["targets"][idx])
        logp = np.asarray(logp_fn(*policy, *args), np.float64)
        ref = np.asarray(logp_fn(*reference, *args), np.float64)
        mask = rows["loss_mask"][idx]
        ratio += float(((logp - ref) * mask).sum())
        nll -= float((logp * mask).sum())
        count += float(mask.sum())
    if not count:
        return {"log_ratio_to_ref": float("nan"), "sample_nll": float("nan")}
    return {"log_ratio_to_ref": ratio / count, "sample_nll": nll / count}


def accuracy_by_terms(records: list[dict], rewards, samples_per_prompt: int) -> dict[str, float]:
    """``{"accuracy_terms<k>": mean reward}`` per number of terms ``k`` of the questions (``"3+14+5"`` has 3), from
    prompt-major ``rewards`` (``samples_per_prompt`` consecutive rows per record); empty when every question has the
    same length."""
    terms = np.asarray([records[r // samples_per_prompt]["question"].count("+") + 1 for r in range(len(rewards))])
    rewards = np.asarray(rewards, np.float64)
    if len(set(terms.tolist())) < 2:
        return {}
    return {f"accuracy_terms{k}": float(rewards[terms == k].mean()) for k in sorted(set(terms.tolist()))}


def make_eval(config, graphdef, tokenizer, eval_records, analysis, logp_fn, seed: int, reference=None):
    """``eval_fn(state, step)``: held-out accuracy of ``eval.samples_per_prompt`` samples per question at temperature
    ``eval.temperature`` (the paper's metric), greedy accuracy, format rate, the log-likelihood figures on the
    offline negatives, and with ``reference = (params, extra)`` (the initial pi_ref) how far the policy moved from it
    on those sampled answers (``sample_log_ratios``). The sampling key depends on ``(seed, step)`` only: every method
    is scored on the same draws."""
    import jax

    from stepjax.rl.rollout import collect_rollout
    from stepjax.sampling import SamplingConfig

    o = config.offline
    sampling = SamplingConfig(
        max_new_tokens=o.max_new_tokens,
        temperature=config.eval.temperature,
        num_samples=config.eval.samples_per_prompt,
        stop_tokens=(tokenizer.eos_id,),
        pad_id=tokenizer.pad_id,
    )

    def eval_fn(state, step: int) -> dict[str, float]:
        params = (state.params, state.extra)
        key = jax.random.fold_in(jax.random.key(1234 + seed), step)
        out: dict[str, float] = {}
        for name, cfg in (("", sampling), ("greedy_", sampling.replace(num_samples=1, greedy=True))):
            rollout = collect_rollout(
                graphdef,
                params,
                eval_records,
                tokenizer,
                cfg,
                key,
                prompt_width=o.prompt_width,
                reward_fns=("orz_math", "answer_format"),
            )
            per = rollout.scored.per_function
            out[f"{name}accuracy"] = float(np.mean(per["orz_math"]))
            if not name:  # sampled answers: also per chain length (longer chains are the harder questions)
                out.update(accuracy_by_terms(eval_records, per["orz_math"], cfg.num_samples))
                if reference is not None:
                    out.update(sample_log_ratios(logp_fn, params, reference, rollout.batch))
            out[f"{name}format_rate"] = float(np.mean(per["answer_format"]))
        if analysis is not None:
            out.update(masked_log_likelihoods(logp_fn, params, analysis))
        print(
            f"step {step}: held-out accuracy (T={config.eval.temperature:g}) {out['accuracy']:.3f}, "
            f"greedy {out['greedy_accuracy']:.3f}, "
            f"correct-step log-lik {out.get('correct_step_logp', float('nan')):.4f}"
        )
        return out

    return eval_fn


def loss_fn(method: str, beta: float, tau: float, aggregation: str):
    """``loss_fn(model, batch, rng)``: ``sft_loss`` on positives (RFT) or ``bcpg_loss`` (BCPG: beta = 1; NSA)."""
    from stepjax.objectives import bcpg_loss, sft_loss, token_log_probs

    def fn(model, batch, rng):
        del rng
        logp = token_log_probs(model(batch["inputs"], batch["positions"]), batch["targets"])
        if method == "rft":  # on the positives (RFT's own rows hold only those; BCPG rows hold both)
            return sft_loss(logp, batch["loss_mask"] * (batch["rewards"] > 0)[:, None])
        return bcpg_loss(
            logp,
            batch["ref_log_probs"],
            batch["loss_mask"],
            batch["rewards"],
            positive_step_mask=batch["step_mask"],
            baselines=batch["baselines"],
            beta=beta,
            tau=tau,
            aggregation=aggregation,
        )

    return fn


TRAIN_KEYS = ("inputs", "targets", "loss_mask", "positions", "ref_log_probs", "step_mask", "rewards", "baselines")


def train_method(
    config,
    env: dict[str, Any],
    reference,
    rows,
    run_dir: str,
    method: str,
    beta: float,
    seed: int,
    eval_fn,
    first_eval: dict[str, float] | None,
):
    """Trains one method from ``reference = (params, extra)`` on ``rows`` in ``run_dir`` (resumable); returns the
    final ``TrainState``. ``first_eval``: the step-0 scores (the reference policy's, shared by all runs)."""
    import jax
    import jax.numpy as jnp
    import optax

    from recipes.stage import run_stage, warmup_adamw
    from stepjax.models.llm import DecoderLM
    from stepjax.rl.preference_pairs import PairBatches
    from stepjax.sharding import shard_batch, use_rules
    from stepjax.sharding.batch import batch_sharding
    from stepjax.train import create_train_state, jit_train_step, make_train_step

    section = config.rft if method == "rft" else config.policy
    mesh, rules, model_cfg = env["mesh"], env["rules"], env["model_cfg"]
    graphdef, state = create_train_state(
        lambda rngs: DecoderLM(model_cfg, rngs=rngs), optax.identity(), seed=seed, mesh=mesh, rules=rules
    )
    # One compiled step per (method, beta), shared by seeds and iterations (same shapes, same optimizer settings).
    cache = env.setdefault("train_steps", {})
    if (method, beta) not in cache:
        tx, schedule = warmup_adamw(section)
        step = make_train_step(
            graphdef,
            loss_fn(method, beta, config.policy.tau, config.policy.aggregation),
            tx,
            loss_weights={"sft" if method == "rft" else "bcpg": 1.0},
            schedule=schedule,
        )
        probe = state.replace(opt_state=tx.init(state.params))
        with jax.set_mesh(mesh):
            cache[method, beta] = tx, jit_train_step(step, probe, batch_sharding=batch_sharding(mesh, rules))
    tx, jitted = cache[method, beta]
    # Copies: the jitted step donates the state's buffers, and the reference weights serve every run.
    params, extra = jax.tree.map(jnp.copy, reference)
    state = state.replace(params=params, extra=extra, opt_state=tx.init(params))

    def step_fn(state, batch):
        with jax.set_mesh(mesh), use_rules(rules):
            return jitted(state, batch)

    batch_size = min(section.batch_size, rows["inputs"].shape[0])
    batches = PairBatches({k: rows[k] for k in TRAIN_KEYS}, batch_size, seed=seed)
    return run_stage(
        config,
        state,
        step_fn,
        batches,
        run_dir,
        total_steps=section.steps,
        eval_fn=eval_fn,
        eval_every=config.eval.every or section.steps,
        first_eval=None if first_eval is None else lambda: first_eval,
        put_batch=lambda b: shard_batch(b, mesh, rules),
    )

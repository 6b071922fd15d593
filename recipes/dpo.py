"""Recipe ``dpo``: direct preference optimisation on the arithmetic task, from pairs of sampled right/wrong answers.

Stage 1 (``warm_start``) is ``orz_rl``'s SFT warm start on noisy traces (``data.wrong_step_fraction`` random slips,
``data.carry_drop_fraction`` of traces with a dropped-carry habit; defaults from ``orz_rl.schema()``) in
``<workdir>/warm_start``; it is also the DPO reference model.
Stage 2 (``pairs``): ``pairs.samples_per_prompt`` temperature-``pairs.temperature`` samples of the warm-start policy
for ``pairs.num_prompts`` distinct train prompts, scored by ORZ's rule reward; a prompt with a right and a wrong
answer gives a pair (chosen right, rejected wrong; ``stepjax.rl.preference_pairs.build_pairs``), written to
``<workdir>/pairs.jsonl``. ``data.pairs_path`` uses a pairs file of that format instead. The same is done on the
held-out prompts (``eval_pairs.jsonl``) to score pairwise preference accuracy.
Stage 3 (``reference``): the warm-start model's log-probs of every pair, computed once and cached in
``<workdir>/reference_logps.npz`` (keyed by the pair's tokens and a fingerprint of the reference weights).
Stage 4 (``dpo``): ``stepjax.objectives.dpo_loss`` under ``make_train_step`` / ``run_training`` in ``<workdir>/dpo``.

A rerun with the same workdir reuses the warm start, the pairs files and the cache, and resumes DPO from its latest
checkpoint. Held-out scores, before DPO (step 0) and every ``eval.every`` steps: ``eval/accuracy`` (the
preferred-answer rate: mean ORZ reward of temperature-1 samples, ``eval.samples_per_prompt`` per held-out prompt),
``eval/greedy_accuracy``, ``eval/format_rate``, ``eval/pair_accuracy`` (held-out pairs whose implicit reward ranks
chosen above rejected; 0 at step 0, where policy = reference) and ``eval/pair_margin``. Training metrics carry TRL's
names (``rewards/accuracies``, ``rewards/margins``, ``logps/chosen``, ...). Curves:
``<workdir>/dpo_curve.png``; before/after numbers: ``<workdir>/summary.json``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections

from recipes import lm_sft, orz_rl
from recipes.stage import params_fingerprint, run_stage, stage_outcome, warmup_adamw
from stepjax.train import config_check as cc
from stepjax.train import defaults


def schema() -> ml_collections.ConfigDict:
    """Every key this recipe understands, with its default."""
    base = orz_rl.schema()
    config = ml_collections.ConfigDict()
    config.recipe = "dpo"
    config.seed = 0
    config.model = base.model
    config.tokenizer = base.tokenizer
    config.data = base.data
    config.data.pairs_path = ""  # a JSONL of {prompt, chosen, rejected, ground_truth}; "" = sample pairs
    config.warm_start = base.warm_start
    config.pairs = dict(
        num_prompts=2048,  # distinct train prompts sampled for pairs
        samples_per_prompt=8,
        pairs_per_prompt=3,  # at most this many disjoint (right, wrong) pairs per prompt
        temperature=1.0,
        max_new_tokens=64,
        prompt_width=16,
        prompts_per_batch=256,  # prompts per sampler call
        reward_fns=("orz_math",),
        eval_pairs=True,  # also build pairs on the held-out prompts (eval/pair_accuracy)
    )
    config.dpo = dict(
        steps=250,
        batch_size=32,  # pairs per step
        learning_rate=1e-4,
        warmup_steps=10,
        grad_clip_norm=1.0,
        beta=1.0,  # TRL's default is 0.1; on the tiny task that drifts far from the reference and loses the format
        loss_type=("sigmoid",),
        loss_weights=(),  # one per loss type; () = 1.0 each
        label_smoothing=0.0,
        reference_free=False,
        f_divergence="reverse_kl",
        f_alpha=1.0,
        mask="completion",  # 'completion': every completion token; 'first_difference': up to where they part
    )
    config.eval = dict(num_examples=200, samples_per_prompt=4, every=50)  # T=1 samples per held-out prompt
    config.train = dict(log_every=10, nonfinite="error")
    config.checkpoint = defaults.checkpoint_section()
    config.checkpoint.every = 50
    config.mesh = defaults.mesh_section()
    config.sharding = defaults.sharding_section()
    config.distributed = defaults.distributed_section()
    return config


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks keys, types, choices and cross-field constraints; raises ``ConfigError`` naming the key."""
    cc.check_against_schema(config, schema(), open_sections=defaults.LM_OPEN_SECTIONS)
    cc.check_choice(config, "config.train.nonfinite", ("error", "skip"))
    cc.check_choice(config, "config.dpo.mask", ("completion", "first_difference"))
    cc.check_positive(
        config,
        "config.pairs.num_prompts",
        "config.pairs.samples_per_prompt",
        "config.pairs.pairs_per_prompt",
        "config.pairs.max_new_tokens",
        "config.pairs.prompt_width",
        "config.pairs.prompts_per_batch",
        "config.dpo.steps",
        "config.dpo.batch_size",
        "config.dpo.learning_rate",
        "config.dpo.beta",
        "config.eval.num_examples",
        "config.eval.samples_per_prompt",
    )
    cc.check_positive(config, "config.pairs.temperature", "config.eval.every", allow_zero=True)
    if config.pairs.samples_per_prompt < 2 and not config.data.pairs_path:
        raise cc.ConfigError(
            f"'config.pairs.samples_per_prompt' ({config.pairs.samples_per_prompt}) must be >= 2: a pair needs a "
            "right and a wrong sample of one prompt"
        )
    if config.data.pairs_path:
        if not os.path.isfile(config.data.pairs_path):
            raise cc.ConfigError(f"'config.data.pairs_path': no such file {config.data.pairs_path!r}")
        from stepjax.rl.preference_pairs import read_pairs

        read_pairs(config.data.pairs_path)  # a malformed record is named (file:line) before anything runs
    if config.pairs.prompt_width + config.pairs.max_new_tokens > config.model.max_seq_len:
        raise cc.ConfigError(
            f"'config.pairs.prompt_width' + 'config.pairs.max_new_tokens' ({config.pairs.prompt_width} + "
            f"{config.pairs.max_new_tokens}) exceeds 'config.model.max_seq_len' ({config.model.max_seq_len})"
        )
    from stepjax.rl import REWARDS

    for name in config.pairs.reward_fns:
        if name not in REWARDS.names():
            raise cc.ConfigError(f"'config.pairs.reward_fns': unknown reward {name!r}; known: {REWARDS.names()}")
    _check_dpo_options(config)
    lm_sft.validate(_warm_start_config(config))


def _dpo_kwargs(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """``dpo_loss`` keyword arguments from ``config.dpo``."""
    d = config.dpo
    return dict(
        beta=d.beta,
        loss_type=list(d.loss_type),
        loss_weights=list(d.loss_weights) or None,
        label_smoothing=d.label_smoothing,
        f_divergence=d.f_divergence,
        f_alpha=d.f_alpha,
        reference_free=d.reference_free,
    )


def _check_dpo_options(config: ml_collections.ConfigDict) -> None:
    """Runs ``dpo_loss`` once on a 1-pair dummy batch, so every option check it has names a config key."""
    import numpy as np

    from stepjax.objectives import dpo_loss

    if not list(config.dpo.loss_type):
        raise cc.ConfigError("'config.dpo.loss_type' is empty; expected a list of DPO loss types, e.g. ['sigmoid']")
    one = np.zeros((1, 2), np.float32)
    refs = (None, None) if config.dpo.reference_free else (np.zeros(1, np.float32),) * 2
    try:
        dpo_loss(one - 1.0, one - 2.0, one + 1.0, one + 1.0, *refs, **_dpo_kwargs(config))
    except ValueError as err:
        raise cc.ConfigError(f"'config.dpo': {err}") from err


def _warm_start_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The ``lm_sft`` config of stage 1: SFT on the recipe's data section (its pair file aside), as ``orz_rl``'s."""
    sft = lm_sft.stage_config(config)
    sft.data = ml_collections.ConfigDict({k: v for k, v in config.data.to_dict().items() if k != "pairs_path"})
    sft.eval.update(num_examples=config.warm_start.eval_examples, max_new_tokens=config.pairs.max_new_tokens)
    return sft


# --------------------------------------------------------------------------------------------------------- running


def run(config: ml_collections.ConfigDict, workdir: str) -> int:
    """Warm start, pairs, reference log-probs, DPO, plots; returns the process exit status."""
    import jax

    from stepjax.models.llm import DecoderLM
    from stepjax.objectives import dpo_loss_weights
    from stepjax.rl.preference_pairs import PairBatches
    from stepjax.sampling import SamplingConfig
    from stepjax.sharding import make_mesh, normalize_rules, shard_batch, use_rules
    from stepjax.sharding.batch import batch_sharding
    from stepjax.train import (
        create_train_state,
        jit_train_step,
        make_train_step,
    )

    status, _, sft_state = lm_sft.train_unless_preempted(
        _warm_start_config(config), os.path.join(workdir, "warm_start")
    )
    if sft_state is None:
        return status
    tokenizer = lm_sft._tokenizer(config)
    model_cfg = lm_sft.model_config(config, tokenizer.vocab_size)
    mesh = make_mesh(config.mesh.shape.to_dict())
    rules = normalize_rules(config.sharding.rules)
    p, d = config.pairs, config.dpo
    width = p.prompt_width + p.max_new_tokens
    sampling = SamplingConfig(
        max_new_tokens=p.max_new_tokens,
        temperature=p.temperature,
        num_samples=p.samples_per_prompt,
        stop_tokens=(tokenizer.eos_id,),
        pad_id=tokenizer.pad_id,
    )
    tx, schedule = warmup_adamw(config.dpo)
    graphdef, state = create_train_state(
        lambda rngs: DecoderLM(model_cfg, rngs=rngs), tx, seed=config.seed, mesh=mesh, rules=rules
    )
    state = state.replace(params=sft_state.params, opt_state=tx.init(sft_state.params))
    reference = (sft_state.params, sft_state.extra)

    # Stage 2: preference pairs (train, and held-out for pairwise accuracy).
    train_source = lm_sft._records(config, "train", config.data.num_train)
    eval_source = lm_sft._records(config, "test", config.eval.num_examples)
    eval_records = [eval_source[i] for i in range(min(len(eval_source), config.eval.num_examples))]
    train_prompts = _distinct_prompts(train_source, p.num_prompts)
    sampler = (tokenizer, graphdef, reference, sampling)
    pairs, names = _pairs(
        config, workdir, "pairs.jsonl", config.data.pairs_path, train_prompts, sampler, salt=3, required=True
    )
    eval_pairs, eval_names = [], []
    if p.eval_pairs:
        eval_pairs, eval_names = _pairs(
            config, workdir, "eval_pairs.jsonl", "", eval_records, sampler, salt=4, required=False
        )
    rows, keys = _encode(tokenizer, pairs, width, names, d.mask)
    eval_rows, eval_keys = _encode(tokenizer, eval_pairs, width, eval_names, d.mask) if eval_pairs else ({}, [])

    # Stage 3: reference log-prob sums, cached on disk.
    sums_fn = _sequence_sums_fn(graphdef)
    if d.reference_free:
        refs = None
    else:
        refs = _reference_sums(workdir, sums_fn, reference, rows, keys, eval_rows, eval_keys)
        rows.update(ref_chosen=refs[0][: len(keys)], ref_rejected=refs[1][: len(keys)])

    # Stage 4: DPO.
    kwargs = _dpo_kwargs(config)
    step = make_train_step(
        graphdef, _dpo_loss_fn(kwargs), tx, loss_weights=dpo_loss_weights(kwargs["loss_type"]), schedule=schedule
    )
    with jax.set_mesh(mesh):
        jitted = jit_train_step(step, state, batch_sharding=batch_sharding(mesh, rules))

    def step_fn(state, batch):
        with jax.set_mesh(mesh), use_rules(rules):
            return jitted(state, batch)

    eval_refs = None if refs is None else (refs[0][len(keys) :], refs[1][len(keys) :])
    eval_fn = _make_eval(config, graphdef, tokenizer, eval_records, sampling, sums_fn, eval_rows, eval_refs)
    batches = PairBatches(rows, min(d.batch_size, len(pairs)), seed=config.seed)
    print(
        f"dpo: {len(pairs)} pairs ({', '.join(kwargs['loss_type'])}, beta {d.beta}, mask {d.mask}), {d.steps} steps of "
        f"{min(d.batch_size, len(pairs))} pairs; held-out {len(eval_records)} prompts, {len(eval_pairs)} pairs; "
        f"workdir {workdir}"
    )
    dpo_dir = os.path.join(workdir, "dpo")
    status, state = stage_outcome(
        lambda: run_stage(
            config,
            state,
            step_fn,
            batches,
            dpo_dir,
            total_steps=d.steps,
            eval_fn=eval_fn,
            first_eval=lambda: eval_fn(state, 0),
            put_batch=lambda b: shard_batch(b, mesh, rules),
        )
    )
    if state is None:
        return status
    if jax.process_index() == 0:
        _finish(config, workdir, dpo_dir, int(jax.device_get(state.step)), len(pairs))
    return 0


def _finish(config, workdir: str, dpo_dir: str, step: int, num_pairs: int) -> None:
    """Curve PNG, ``summary.json`` (first and last held-out scores) and the closing line."""
    from stepjax.train import plot_metrics, read_metrics

    metrics_path = os.path.join(dpo_dir, "metrics.jsonl")
    png = plot_metrics(
        metrics_path,
        os.path.join(workdir, "dpo_curve.png"),
        keys=("dpo", "rewards/accuracies", "rewards/margins"),
        eval_keys=("eval/accuracy", "eval/greedy_accuracy", "eval/pair_accuracy"),
        title=f"dpo ({', '.join(config.dpo.loss_type)}, beta {config.dpo.beta}, mask {config.dpo.mask}): loss and "
        "held-out accuracy",
        log_scale=False,
    )
    evals = [r for r in read_metrics(metrics_path) if "eval/accuracy" in r]
    first, last = evals[0] if evals else {}, evals[-1] if evals else {}
    summary = {"pairs": num_pairs, "dpo/first_eval": first, "dpo/final_eval": last}
    for key in ("accuracy", "greedy_accuracy", "format_rate", "pair_accuracy"):
        if f"eval/{key}" in first and f"eval/{key}" in last:
            summary[f"before/{key}"], summary[f"after/{key}"] = first[f"eval/{key}"], last[f"eval/{key}"]
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    nan = float("nan")
    print(
        f"done: step {step}; preferred-answer rate (held-out accuracy, T=1) {first.get('eval/accuracy', nan):.3f} -> "
        f"{last.get('eval/accuracy', nan):.3f}, greedy {first.get('eval/greedy_accuracy', nan):.3f} -> "
        f"{last.get('eval/greedy_accuracy', nan):.3f}, held-out pair accuracy "
        f"{last.get('eval/pair_accuracy', nan):.3f}; curve {png}; workdir {workdir}"
    )


def _distinct_prompts(source: Any, n: int) -> list[dict]:
    """The first ``n`` records of ``source`` with distinct prompts (fewer if it has fewer)."""
    seen, out = set(), []
    for i in range(len(source)):
        record = source[i]
        if record["prompt"] not in seen:
            seen.add(record["prompt"])
            out.append(record)
            if len(out) == n:
                break
    return out


def _pairs(config, workdir: str, name: str, user_path: str, records, sampler, *, salt: int, required: bool):
    """``(pairs, names for error messages)``: from ``user_path``, else ``<workdir>/name`` if a previous run wrote
    it, else sampled with ``sampler = (tokenizer, graphdef, reference state, SamplingConfig)`` (the warm-start
    policy) and written there. No pairs: a ``ConfigError`` if ``required`` (the training pairs), else an empty list
    (held-out pairs: pair accuracy is then not logged)."""
    from stepjax.rl.preference_pairs import read_pairs, write_pairs

    path = user_path or os.path.join(workdir, name)
    if os.path.isfile(path):
        pairs, lines = read_pairs(path, allow_empty=not required, return_lines=True)
        print(f"pairs: {len(pairs)} read from {path}")
        return pairs, [f"{path}:{line}" for line in lines]
    pairs = _sample_pairs(config, records, *sampler, salt)
    if not pairs and required:
        raise cc.ConfigError(
            f"no preference pairs from {len(records)} prompts: no prompt had both a right and a wrong sample; raise "
            "'config.pairs.samples_per_prompt' or 'config.pairs.num_prompts', or train the warm start longer"
        )
    write_pairs(path, pairs)
    return pairs, [f"{path}:{i + 1}" for i in range(len(pairs))]


def _sample_pairs(config, records: list[dict], tokenizer, graphdef, reference, sampling, salt: int) -> list[dict]:
    """Samples every prompt ``pairs.samples_per_prompt`` times with the reference policy and builds the pairs."""
    import time

    import jax
    import numpy as np

    from stepjax.rl.preference_pairs import build_pairs, pair_length
    from stepjax.rl.rollout import collect_rollout

    p = config.pairs
    t0 = time.perf_counter()
    completions, scores, finish = [], [], []
    for start in range(0, len(records), p.prompts_per_batch):
        rollout = collect_rollout(
            graphdef,
            reference,
            records[start : start + p.prompts_per_batch],
            tokenizer,
            sampling,
            jax.random.fold_in(jax.random.key(config.seed + salt), start),
            prompt_width=p.prompt_width,
            reward_fns=tuple(p.reward_fns),
        )
        completions += rollout.completions
        scores.append(np.asarray(rollout.scores))
        finish += rollout.finish_reasons
    scores = np.concatenate(scores)
    built = build_pairs(
        records,
        completions,
        scores,
        p.samples_per_prompt,
        seed=config.seed + salt,
        finish_reasons=finish,
        pairs_per_prompt=p.pairs_per_prompt,
    )
    # Re-encoding a decoded completion can change its length (e.g. invalid UTF-8 bytes): drop what no longer fits.
    pairs = [x for x in built if pair_length(tokenizer, x) <= p.prompt_width + p.max_new_tokens + 1]
    dropped = len(built) - len(pairs)
    print(
        f"pairs: {len(pairs)} from {len(records)} prompts x {p.samples_per_prompt} samples (T={p.temperature}, "
        f"right-sample rate {np.mean(scores >= 0.5):.3f}{f'; {dropped} too long, dropped' if dropped else ''}) in "
        f"{time.perf_counter() - t0:.1f}s"
    )
    return pairs


def _encode(tokenizer, pairs: list[dict], width: int, names: list[str], mask: str):
    """Pair rows and cache keys; with ``mask='first_difference'`` the masks stop where the completions part (the
    keys then carry the mode, so cached reference sums of other masks are never mixed in)."""
    from stepjax.data import MalformedRecordError
    from stepjax.rl.preference_pairs import encode_pairs, truncate_at_first_difference

    try:
        rows, keys = encode_pairs(tokenizer, pairs, width, names=names)
    except ValueError as err:  # a pair too long for the rows: bad input, named
        raise MalformedRecordError(str(err)) from None
    if mask == "first_difference":
        rows = truncate_at_first_difference(rows)
        keys = [f"{key}:{mask}" for key in keys]
    return rows, keys


def _sequence_sums_fn(graphdef):
    """``fn(params, extra, rows) -> (chosen [P], rejected [P])``: summed completion log-probs, jitted."""
    import jax

    from stepjax.objectives.dpo import pair_sequence_log_probs
    from stepjax.train import merge_model

    @jax.jit
    def fn(params, extra, rows):
        chosen, rejected = _pair_log_probs(merge_model(graphdef, params, extra), rows)
        return pair_sequence_log_probs(chosen, rejected, rows["chosen_mask"], rows["rejected_mask"])

    return fn


def _pair_log_probs(model, rows):
    """Per-token log-probs ``(chosen [P, L], rejected [P, L])``: one forward pass over both sides."""
    import jax.numpy as jnp

    from stepjax.objectives.dpo import pair_token_log_probs, stack_pairs

    inputs = stack_pairs(rows["chosen_inputs"], rows["rejected_inputs"])
    targets = stack_pairs(rows["chosen_targets"], rows["rejected_targets"])
    positions = jnp.broadcast_to(jnp.arange(inputs.shape[1], dtype=jnp.int32), inputs.shape)
    return pair_token_log_probs(model(inputs, positions), targets)


def _dpo_loss_fn(kwargs: dict[str, Any]):
    """``loss_fn(model, batch, rng)`` for ``make_train_step``: ``dpo_loss`` on a batch of pair rows."""
    from stepjax.objectives import dpo_loss

    def fn(model, batch, rng):
        del rng
        chosen, rejected = _pair_log_probs(model, batch)
        refs = (None, None) if kwargs["reference_free"] else (batch["ref_chosen"], batch["ref_rejected"])
        return dpo_loss(chosen, rejected, batch["chosen_mask"], batch["rejected_mask"], *refs, **kwargs)

    return fn


PAIR_TIE_TOLERANCE = 1e-3  # nats: a held-out pair counts as ranked right when its log-ratio margin exceeds this
_ROW_KEYS = ("chosen_inputs", "chosen_targets", "chosen_mask", "rejected_inputs", "rejected_targets", "rejected_mask")


def _batched_sums(sums_fn, model_state, rows: dict, indices, batch_size: int = 256):
    """``(chosen [n], rejected [n])`` summed log-probs of the pairs at ``indices``, ``batch_size`` at a time."""
    import numpy as np

    chosen, rejected = [], []
    for start in range(0, len(indices), batch_size):
        idx = np.asarray(indices[start : start + batch_size])
        c, r = sums_fn(*model_state, {k: rows[k][idx] for k in _ROW_KEYS})
        chosen.append(np.asarray(c))
        rejected.append(np.asarray(r))
    if not chosen:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    return np.concatenate(chosen), np.concatenate(rejected)


def _reference_sums(workdir: str, sums_fn, reference, rows, keys, eval_rows, eval_keys):
    """Reference sums for train then held-out pairs (``[P_train + P_eval]`` each), through the on-disk cache."""
    import time

    import numpy as np

    from stepjax.objectives.reference_cache import ReferenceCache, cached_reference_log_probs

    both = {k: np.concatenate([rows[k], eval_rows[k]]) if eval_keys else rows[k] for k in _ROW_KEYS}
    computed = [0]

    def compute(indices):
        computed[0] += len(indices)
        return _batched_sums(sums_fn, reference, both, indices)

    t0 = time.perf_counter()
    path = os.path.join(workdir, "reference_logps.npz")
    meta = {"reference": params_fingerprint(reference[0])}
    if os.path.isfile(path):
        try:
            ReferenceCache.load(path, expect_meta=meta)
        except ValueError as err:  # another reference model (e.g. a changed warm start) or an unreadable file
            print(f"reference log-probs: discarding the cache ({err})")
            os.remove(path)
    out = cached_reference_log_probs(path, keys + eval_keys, compute, meta=meta, batch_size=256)
    total = len(keys) + len(eval_keys)
    print(
        f"reference log-probs: {computed[0]} computed, {total - computed[0]} reused from {path} "
        f"({time.perf_counter() - t0:.1f}s)"
    )
    return out


def _make_eval(config, graphdef, tokenizer, records, sampling, sums_fn, eval_rows, eval_refs):
    """``eval_fn(state, step)``: T=1 accuracy (``eval.samples_per_prompt`` samples of each held-out prompt: the mean
    estimates the one-sample preferred-answer rate with less noise) and greedy accuracy; held-out pair accuracy
    when there are held-out pairs."""
    import jax
    import numpy as np

    from stepjax.rl.rollout import collect_rollout

    prompt_width, samples_per_prompt, beta = config.pairs.prompt_width, config.eval.samples_per_prompt, config.dpo.beta

    def eval_fn(state, step: int) -> dict[str, float]:
        params = (state.params, state.extra)
        key = jax.random.fold_in(jax.random.key(1234), step)
        out: dict[str, float] = {}
        for name, cfg in (
            ("", sampling.replace(num_samples=samples_per_prompt, temperature=1.0)),
            ("greedy_", sampling.replace(num_samples=1, greedy=True)),
        ):
            rollout = collect_rollout(
                graphdef,
                params,
                records,
                tokenizer,
                cfg,
                key,
                prompt_width=prompt_width,
                reward_fns=("orz_math", "answer_format"),
            )
            per = rollout.scored.per_function
            out[f"{name}accuracy"] = float(np.mean(per["orz_math"]))
            out[f"{name}format_rate"] = float(np.mean(per["answer_format"]))
        sample = f"{records[0]['prompt']!r} -> {rollout.completions[0]!r}"  # the last rollout: greedy
        if eval_rows:
            n = eval_rows["chosen_mask"].shape[0]
            chosen, rejected = _batched_sums(sums_fn, params, eval_rows, np.arange(n))
            if eval_refs is not None:
                chosen, rejected = chosen - eval_refs[0], rejected - eval_refs[1]
            margins = chosen - rejected
            # Ties count as misses: at step 0 (policy = reference) the margins are float noise, the accuracy 0.
            out["pair_accuracy"] = float(np.mean(margins > PAIR_TIE_TOLERANCE))
            out["pair_margin"] = float(beta * np.mean(margins))
        print(
            f"step {step}: held-out accuracy (T=1) {out['accuracy']:.3f}, greedy {out['greedy_accuracy']:.3f}"
            + (f", pair accuracy {out['pair_accuracy']:.3f}" if "pair_accuracy" in out else "")
            + f"; greedy sample {sample}"
        )
        return out

    return eval_fn

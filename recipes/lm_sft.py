"""Recipe ``lm_sft``: next-token training of a decoder LM on prompt/response data, scored by held-out answer accuracy.

Data: the synthetic arithmetic task (``data.source='arithmetic'``) or a JSONL / ArrayRecord file of
``{"prompt": ..., "response": ..., "ground_truth": ...}`` records. The loss covers response tokens only. The held-out
score ``eval/accuracy`` is the fraction of greedy completions whose boxed answer matches the ground truth.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import ml_collections

from stepjax.models.llm import LLMConfig, llm_preset
from stepjax.train import config_check as cc
from stepjax.train import defaults

DATA_SOURCES = ("arithmetic", "jsonl", "array_record")
TOKENIZERS = ("byte", "hf")


def schema() -> ml_collections.ConfigDict:
    """Every key this recipe understands, with its default (the ``tiny`` shape)."""
    model = dataclasses.asdict(llm_preset("tiny"))
    model.update(vocab_size=0, rope_scaling=None, max_seq_len=512)  # vocab 0: take it from the tokenizer
    config = ml_collections.ConfigDict()
    config.recipe = "lm_sft"
    config.seed = 0
    config.model = model
    config.tokenizer = dict(kind="byte", path="")
    config.data = dict(
        source="arithmetic",
        path="",  # jsonl / array_record: file path (train); eval_path: held-out file
        eval_path="",
        ops="+",
        min_digits=1,
        max_digits=2,
        wrong_step_fraction=0.0,
        carry_drop_fraction=0.0,
        num_train=50_000,
        seq_len=96,
        packing=False,
        shuffle=True,
    )
    config.loss = dict(aggregation="token_mean", z_loss=0.0)
    config.eval = dict(num_examples=200, max_new_tokens=64, batch_size=100)
    config.train = defaults.train_section()
    config.optimizer = defaults.optimizer_section()
    config.optimizer.update(learning_rate=3e-3, weight_decay=0.01, b2=0.98)
    config.checkpoint = defaults.checkpoint_section()
    config.mesh = defaults.mesh_section()
    config.sharding = defaults.sharding_section()
    config.distributed = defaults.distributed_section()
    return config


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks keys, types, choices and cross-field constraints; raises ``ConfigError`` naming the key."""
    cc.check_against_schema(config, schema(), open_sections=defaults.LM_OPEN_SECTIONS)
    cc.check_choice(config, "config.data.source", DATA_SOURCES)
    cc.check_choice(config, "config.tokenizer.kind", TOKENIZERS)
    cc.check_choice(config, "config.train.nonfinite", ("error", "skip"))
    cc.check_choice(config, "config.checkpoint.on_corrupt", ("error", "previous"))
    cc.check_positive(
        config,
        "config.train.total_steps",
        "config.train.batch_size",
        "config.train.num_micro_batches",
        "config.data.seq_len",
        "config.optimizer.learning_rate",
    )
    cc.check_divides(config, "config.train.batch_size", "config.train.num_micro_batches")
    if config.data.source != "arithmetic" and not config.data.path:
        raise cc.ConfigError(f"'config.data.path' must name a file when config.data.source is {config.data.source!r}")
    if config.data.path and not os.path.exists(config.data.path):
        raise cc.ConfigError(f"'config.data.path': no such file {config.data.path!r}")
    if config.tokenizer.kind == "hf" and not os.path.exists(config.tokenizer.path):
        raise cc.ConfigError(f"'config.tokenizer.path': no such tokenizer.json {config.tokenizer.path!r}")
    if config.data.seq_len > config.model.max_seq_len:
        raise cc.ConfigError(
            f"'config.data.seq_len' ({config.data.seq_len}) exceeds 'config.model.max_seq_len' "
            f"({config.model.max_seq_len})"
        )
    try:
        model_config(config, vocab_size=max(config.model.vocab_size, 1))
    except (TypeError, ValueError) as err:
        raise cc.ConfigError(f"'config.model': {err}") from err


# The sections a recipe's warm-start stage shares with the recipe (copied, never aliased).
STAGE_SECTIONS = ("model", "tokenizer", "checkpoint", "mesh", "sharding", "distributed")


def stage_config(config: ml_collections.ConfigDict, *, sections: tuple[str, ...] = ()) -> ml_collections.ConfigDict:
    """This recipe's config for another recipe's warm-start stage, from the caller's ``config``: its seed; copies of
    its ``STAGE_SECTIONS`` and ``sections`` (copies: this stage changes ``checkpoint.every``, and the caller's later
    stages read their own); ``train``/``optimizer`` from ``config.warm_start`` (``steps``, ``batch_size``,
    ``learning_rate``, ``warmup_steps``) with ``config.train.log_every``; one checkpoint, at the end. Callers then
    set what is their own (data, eval)."""
    sft = schema()
    sft.seed = config.seed
    for key in STAGE_SECTIONS + tuple(sections):
        sft[key] = config[key].copy_and_resolve_references()
    w = config.warm_start
    sft.train.update(total_steps=max(w.steps, 1), batch_size=w.batch_size, log_every=max(config.train.log_every, 1))
    sft.optimizer.update(learning_rate=w.learning_rate, warmup_steps=w.warmup_steps)
    sft.checkpoint.every = max(w.steps, 1)
    return sft


def model_config(config: ml_collections.ConfigDict, vocab_size: int) -> LLMConfig:
    fields = config.model.to_dict()
    fields["vocab_size"] = fields["vocab_size"] or vocab_size
    return LLMConfig(**fields)


# --------------------------------------------------------------------------------------------------------- running


def _tokenizer(config: ml_collections.ConfigDict):
    from stepjax.data import ByteTokenizer, HFTokenizer

    return ByteTokenizer() if config.tokenizer.kind == "byte" else HFTokenizer.from_file(config.tokenizer.path)


def _records(config: ml_collections.ConfigDict, split: str, n: int) -> Any:
    from stepjax.data import InMemorySource, make_arithmetic_split, open_source

    d = config.data
    if d.source == "arithmetic":
        return InMemorySource(
            make_arithmetic_split(
                split,
                n,
                config.seed,
                ops=tuple(d.ops),
                digits=(d.min_digits, d.max_digits),
                wrong_step_fraction=d.wrong_step_fraction if split == "train" else 0.0,
                carry_drop_fraction=d.carry_drop_fraction if split == "train" else 0.0,
                unique=split == "test",
            )
        )
    path = d.path if split == "train" else d.eval_path
    return open_source(path) if path else None


def run(config: ml_collections.ConfigDict, workdir: str) -> int:
    """Trains, evaluates, plots; returns the process exit status."""
    return train_unless_preempted(config, workdir)[0]


def train_unless_preempted(config: ml_collections.ConfigDict, workdir: str, **kwargs: Any) -> tuple[int, Any, Any]:
    """``train`` (same arguments) for a recipe's stage: a SIGTERM stop, after its checkpoint and message, returns
    ``(0, None, None)`` instead of raising. Callers go on only when the state is not None, else return the status."""
    from stepjax.train import Preempted

    try:
        return train(config, workdir, **kwargs)
    except Preempted:
        return 0, None, None


def train(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    train_source: Any = None,
    eval_records: list[dict] | None = None,
) -> tuple[int, Any, Any]:
    """``run`` for composing recipes: ``(exit status, graphdef, final TrainState)`` (state None unless status 0).

    Args:
      config, workdir: as ``run``.
      train_source: the training records, for a recipe that makes its own data: anything
        ``stepjax.data.make_lm_pipeline`` reads (``__len__``/``__getitem__`` of prompt/response or text records, e.g.
        ``InMemorySource`` or ``stepjax.data.compound_qa.CompoundQASource``). None: from ``config.data`` (the
        arithmetic task or ``data.path``). Batching, shuffling and packing still follow ``config.data``.
      eval_records: the held-out ``{"prompt", "ground_truth"}`` records scored by ``answer_accuracy``, used as given.
        None: from ``config.data`` (the first ``eval.num_examples``); an empty list: no evaluation.

    Raises ``stepjax.train.Preempted`` (a ``SystemExit(0)``) after saving when the run is stopped by SIGTERM/SIGINT.
    """
    import jax
    import numpy as np

    from stepjax.data import make_lm_pipeline
    from stepjax.evals import answer_accuracy
    from stepjax.models.llm import DecoderLM
    from stepjax.sharding import (
        MeshConfigError,
        initialize_distributed,
        local_batch_rows,
        make_mesh,
        normalize_rules,
        shard_batch,
        use_rules,
    )
    from stepjax.sharding.batch import batch_sharding
    from stepjax.train import (
        NonFiniteLossError,
        Preempted,
        create_train_state,
        jit_train_step,
        lm_loss_fn,
        make_optimizer,
        make_train_step,
        plot_metrics,
        run_training,
    )

    dist = config.distributed
    if dist.coordinator_address or dist.num_processes:
        initialize_distributed(
            dist.coordinator_address or None,
            dist.num_processes or None,
            None if dist.process_id < 0 else dist.process_id,
        )
    try:
        mesh = make_mesh(config.mesh.shape.to_dict())
    except MeshConfigError as err:
        raise cc.ConfigError(f"'config.mesh.shape': {err}") from err
    rules = normalize_rules(config.sharding.rules)
    tokenizer = _tokenizer(config)
    model_cfg = model_config(config, tokenizer.vocab_size)
    if model_cfg.vocab_size < tokenizer.vocab_size:
        raise cc.ConfigError(
            f"'config.model.vocab_size' ({model_cfg.vocab_size}) is smaller than the tokenizer's "
            f"vocabulary ({tokenizer.vocab_size})"
        )
    train = config.train
    rows = local_batch_rows(mesh, train.batch_size, rules)
    if train_source is None:
        train_source = _records(config, "train", config.data.num_train)
    train_iter = make_lm_pipeline(
        train_source,
        tokenizer,
        seq_len=config.data.seq_len,
        batch_size=len(rows),
        seed=config.seed,
        shuffle=config.data.shuffle,
        packing=config.data.packing,
        shard_index=jax.process_index(),
        shard_count=jax.process_count(),
    )
    if eval_records is None:
        held_out = _records(config, "test", config.eval.num_examples)
        n = min(len(held_out), config.eval.num_examples) if held_out is not None else 0
        eval_records = [held_out[i] for i in range(n)]

    tx, schedule = make_optimizer(config.optimizer.to_dict(), train.total_steps)
    graphdef, state = create_train_state(
        lambda rngs: DecoderLM(model_cfg, rngs=rngs), tx, seed=config.seed, mesh=mesh, rules=rules
    )
    print(f"lm_sft: {model_cfg.num_params() / 1e6:.2f}M parameters on mesh {dict(mesh.shape)}; workdir {workdir}")
    loss_fn = lm_loss_fn(config.loss.aggregation, config.loss.z_loss)
    step = make_train_step(
        graphdef, loss_fn, tx, loss_weights={"lm": 1.0}, num_micro_batches=train.num_micro_batches, schedule=schedule
    )
    with jax.set_mesh(mesh):
        jitted = jit_train_step(step, state, batch_sharding=batch_sharding(mesh, rules))

    def step_fn(state, batch):
        with jax.set_mesh(mesh), use_rules(rules):
            return jitted(state, batch)

    def eval_fn(state, step_num: int) -> dict[str, float]:
        if not eval_records:
            return {}
        metrics, completions = answer_accuracy(
            graphdef,
            state.params,
            eval_records,
            tokenizer,
            max_new_tokens=config.eval.max_new_tokens,
            batch_size=config.eval.batch_size,
            extra=state.extra,
        )
        print(
            f"step {step_num}: eval accuracy {metrics['accuracy']:.3f}; sample {eval_records[0]['prompt']!r} -> "
            f"{completions[0]!r}"
        )
        return metrics

    try:
        state = run_training(
            state,
            step_fn,
            train_iter,
            workdir,
            total_steps=train.total_steps,
            log_every=train.log_every,
            checkpoint_every=config.checkpoint.every,
            keep_checkpoints=config.checkpoint.keep,
            eval_every=train.eval_every or train.total_steps,
            eval_fn=eval_fn,
            put_batch=lambda b: shard_batch(b, mesh, rules),
            nonfinite=train.nonfinite,
            on_corrupt=config.checkpoint.on_corrupt,
            async_checkpoints=config.checkpoint.async_save,
            tokens_per_batch=train.batch_size * config.data.seq_len,
            config_snapshot=config.to_dict(),
            resume="auto" if config.checkpoint.resume else "never",
        )
    except Preempted as stop:
        print(str(stop))
        raise
    except NonFiniteLossError as err:
        print(f"error: {err}")
        return 3, graphdef, None
    if jax.process_index() == 0:
        png = plot_metrics(os.path.join(workdir, "metrics.jsonl"), os.path.join(workdir, "loss_curve.png"))
        final = _last_eval(os.path.join(workdir, "metrics.jsonl"))
        scores = ""  # no held-out records (e.g. a recipe's warm start with eval_records=[])
        if "eval/accuracy" in final:
            fmt = final.get("eval/format_rate", float("nan"))
            scores = f", eval/accuracy {final['eval/accuracy']:.3f} (format rate {fmt:.3f})"
        print(f"done: step {int(np.asarray(state.step))}{scores}; curve {png}; workdir {workdir}")
    return 0, graphdef, state


def _last_eval(jsonl_path: str) -> dict[str, float]:
    import json

    last: dict[str, float] = {}
    with open(jsonl_path) as f:
        for line in f:
            record = json.loads(line)
            if any(k.startswith("eval/") for k in record):
                last = record
    return last

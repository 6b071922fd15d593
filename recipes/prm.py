"""Recipe ``prm``: process reward models on synthetic long chains of thought, first-error (FE) labels against Error
Propagation / Error Cessation (EP/EC) labels (arXiv 2505.14391, llm-rl.md §5).

Per seed: (1) the scripted generator (``stepjax.data.long_cot``) writes training chains for a₁+…+a_n — clean ones,
chains that carry an error to the end (propagation) and chains that reflect and fix it (cessation); the programmatic
judge reads every step from the text; (2) each label scheme in ``labels`` turns the judgements into PRM records
(FE: a correct chain all 1, an incorrect one cut after its first error; EP/EC: the paper's rules); (3) one PRM per
scheme (byte-level ``DecoderLM`` + score head, same initialisation, same batches, same steps) is trained with the
per-step BCE; (4) both are evaluated on held-out problems: step precision/recall/F1 against the true EP/EC labels
(also the recall on correct steps after an error, and F1 on self-correcting chains), Best-of-N accuracy over
``candidates`` generator samples per problem picked by the final-step score, and PRM-guided step search (PRM@N-step).

Outputs in the workdir: ``seed_<s>/<scheme>/metrics.jsonl`` (training curves), ``seed_<s>/results.json``,
``summary.json`` (per seed and mean/std over seeds), ``results.md`` (the table), ``prm.png``.
Exit status: 0 done, 2 bad config, 3 non-finite loss.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import ml_collections

from stepjax.train import config_check as cc
from stepjax.train import defaults

logger = logging.getLogger(__name__)

LABEL_SCHEMES = ("first_error", "ep_ec")
SCHEME_NAMES = {"first_error": "A (FE labels)", "ep_ec": "B (EP/EC labels)"}


def schema() -> ml_collections.ConfigDict:
    """Every key this recipe understands, with its default (the ``tiny`` shape)."""
    import dataclasses

    from stepjax.models.llm import llm_preset

    model = dataclasses.asdict(llm_preset("tiny"))
    model.update(vocab_size=0, rope_scaling=None, max_seq_len=512)  # vocab 0: the byte tokenizer's
    config = ml_collections.ConfigDict()
    config.recipe = "prm"
    config.seeds = (0, 1, 2)
    config.labels = LABEL_SCHEMES
    config.model = model
    config.data = dict(
        min_terms=3,
        max_terms=6,
        max_value=9,  # 1-digit terms: with 2-digit terms the tiny PRMs did not learn to flag wrong steps in budget
        error_prob=0.2,  # per addition
        cessation_prob=0.5,  # reflect right after an own error
        late_cessation_prob=0.3,  # reflect after a step that built on the error
        restart_prob=0.3,  # a reflection written as a correct new approach from scratch
        num_train=6000,
        separator="\n",
        seq_len=128,  # training rows; longer chains are skipped (counted)
    )
    # Next-token warm start of the trunk on the generator's chains (shared by every scheme of a seed; 0 = random init)
    config.warm_start = dict(steps=300, batch_size=32, learning_rate=3e-3)
    config.prm = dict(train_on_last_step_only=False, aggregation="token_mean", init_scale=0.01)
    # batch_size: solutions per step; packed_rows > 0 packs them into that many rows of data.seq_len (0: a row each)
    config.train = dict(total_steps=800, batch_size=32, packed_rows=14, num_micro_batches=1, log_every=25)
    config.optimizer = defaults.optimizer_section()
    config.optimizer.update(learning_rate=3e-3, warmup_steps=50, weight_decay=0.01, b2=0.98)
    config.eval = dict(
        num_chains=600,  # held-out chains for step-level metrics
        num_problems=200,  # held-out problems for best-of-N and step search
        candidates=64,  # generator samples per problem
        best_of_n=(1, 4, 16, 64),
        aggregation="last",  # final-step score (the paper's PRM@N)
        step_search_n=(1, 4, 8),
        threshold=0.5,
        batch_size=64,  # packed rows per scoring forward
    )
    return config


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks keys, types, choices and cross-field constraints; raises ``ConfigError`` naming the key."""
    from stepjax.evals.best_of_n import SCORE_AGGREGATIONS
    from stepjax.models.llm import LLMConfig
    from stepjax.objectives.terms import AGGREGATIONS

    cc.check_against_schema(config, schema(), open_sections=("config.model.rope_scaling",))
    if not config.seeds or len(set(config.seeds)) != len(config.seeds):
        raise cc.ConfigError(f"'config.seeds' must list distinct seeds, got {config.seeds!r}")
    if not config.labels or any(s not in LABEL_SCHEMES for s in config.labels):
        raise cc.ConfigError(f"'config.labels' must name some of {LABEL_SCHEMES}, got {config.labels!r}")
    for key in ("error_prob", "cessation_prob", "late_cessation_prob", "restart_prob"):
        if not 0.0 <= config.data[key] <= 1.0:
            raise cc.ConfigError(f"'config.data.{key}' must be in [0, 1], got {config.data[key]}")
    if not 2 <= config.data.min_terms <= config.data.max_terms:
        raise cc.ConfigError("'config.data.min_terms' must be >= 2 and <= 'config.data.max_terms'")
    if not config.data.separator:
        raise cc.ConfigError("'config.data.separator' must be a non-empty string")
    cc.check_positive(config, "config.warm_start.steps", allow_zero=True)
    cc.check_positive(config, "config.warm_start.batch_size", "config.warm_start.learning_rate")
    cc.check_positive(
        config,
        "config.data.max_value",
        "config.data.num_train",
        "config.data.seq_len",
        "config.train.total_steps",
        "config.train.batch_size",
        "config.train.num_micro_batches",
        "config.train.log_every",
        "config.optimizer.learning_rate",
        "config.eval.num_chains",
        "config.eval.num_problems",
        "config.eval.candidates",
        "config.eval.batch_size",
    )
    rows = config.train.packed_rows or config.train.batch_size
    if config.train.packed_rows < 0 or rows % config.train.num_micro_batches:
        raise cc.ConfigError(
            f"'config.train.packed_rows' (or batch_size when 0) must be >= 0 and divisible by "
            f"'config.train.num_micro_batches', got {rows} rows for {config.train.num_micro_batches} micro-batches"
        )
    cc.check_choice(config, "config.prm.aggregation", AGGREGATIONS)
    cc.check_choice(config, "config.eval.aggregation", SCORE_AGGREGATIONS)
    bad_n = [n for n in config.eval.best_of_n if not 1 <= n <= config.eval.candidates]
    if bad_n or not config.eval.best_of_n:
        raise cc.ConfigError(
            f"'config.eval.best_of_n' entries must be in [1, config.eval.candidates={config.eval.candidates}], "
            f"got {config.eval.best_of_n!r}"
        )
    if not config.eval.step_search_n or any(n < 1 for n in config.eval.step_search_n):
        raise cc.ConfigError(f"'config.eval.step_search_n' entries must be >= 1, got {config.eval.step_search_n!r}")
    if not 0.0 < config.eval.threshold < 1.0:
        raise cc.ConfigError(f"'config.eval.threshold' must be in (0, 1), got {config.eval.threshold}")
    clean = _clean_chain_length(config.data)
    if config.data.seq_len < clean:
        raise cc.ConfigError(
            f"'config.data.seq_len' ({config.data.seq_len}) is shorter than an error-free chain of "
            f"{config.data.max_terms} terms ({clean} tokens)"
        )
    if max(config.data.seq_len, _max_chain_length(config.data)) > config.model.max_seq_len:
        raise cc.ConfigError(
            f"'config.model.max_seq_len' ({config.model.max_seq_len}) is shorter than the longest possible chain "
            f"({_max_chain_length(config.data)} tokens)"
        )
    try:
        LLMConfig(**{**config.model.to_dict(), "vocab_size": 259})
    except (TypeError, ValueError) as err:
        raise cc.ConfigError(f"'config.model': {err}") from err


def _prompt_length(d) -> int:
    from stepjax.data.long_cot import long_cot_prompt

    return 1 + len(long_cot_prompt("+".join([str(d.max_value)] * d.max_terms)))  # + BOS


def _clean_chain_length(d) -> int:
    big = len(str(d.max_value * d.max_terms))
    step = 2 * big + len(str(d.max_value)) + 2 + len(d.separator)
    return _prompt_length(d) + (d.max_terms - 1) * step


def _max_chain_length(d) -> int:
    """Tokens of the longest chain the generator can write: every addition wrong (values up to +10 each) and followed
    by a restart listing every term."""
    big = len(str(d.max_value * d.max_terms + 10 * d.max_terms))
    add = 2 * big + len(str(d.max_value)) + 2 + len(d.separator)
    restart = len("wait, restart: ") + d.max_terms * (len(str(d.max_value)) + 1) + big + len(d.separator)
    return _prompt_length(d) + (d.max_terms - 1) * (add + max(add + len("wait, "), restart))


# --------------------------------------------------------------------------------------------------------- data


def _generator_kwargs(d) -> dict[str, float]:
    return dict(
        error_prob=d.error_prob,
        cessation_prob=d.cessation_prob,
        late_cessation_prob=d.late_cessation_prob,
        restart_prob=d.restart_prob,
    )


def _problems(rng, d, count: int, exclude: set) -> list[tuple[int, ...]]:
    from stepjax.data.long_cot import sample_numbers

    out = []
    for _ in range(100 * count):
        numbers = sample_numbers(rng, min_terms=d.min_terms, max_terms=d.max_terms, max_value=d.max_value)
        if numbers not in exclude:
            out.append(numbers)
            if len(out) == count:
                return out
    raise cc.ConfigError(
        f"'config.data': too few distinct problems ({d.min_terms}-{d.max_terms} terms up to {d.max_value}) for "
        f"{count} held-out problems outside the training set"
    )


def _judged(chain, separator: str):
    """The chain as text, read back by the programmatic judge: ``(steps, judgements, final_correct)``."""
    from stepjax.data.answers import answers_match
    from stepjax.data.long_cot import judge_steps, render_response, split_response

    steps, answer = split_response(render_response(chain, separator=separator), separator=separator)
    judgements = judge_steps(chain.numbers, steps)
    return steps, judgements, answer is not None and answers_match(answer, str(sum(chain.numbers)))


def make_datasets(config, seed: int) -> dict[str, Any]:
    """Training chains, held-out chains and held-out problems (disjoint from training problems) for one seed."""
    import numpy as np

    from stepjax.data.long_cot import sample_chain

    d, e = config.data, config.eval
    rng = np.random.default_rng(seed)
    gen = _generator_kwargs(d)
    train_problems = _problems(rng, d, d.num_train, set())
    seen = set(train_problems)
    eval_problems = _problems(rng, d, e.num_chains + e.num_problems, seen)
    return {
        "train": [sample_chain(rng, p, **gen) for p in train_problems],
        "eval_chains": [sample_chain(rng, p, **gen) for p in eval_problems[: e.num_chains]],
        "problems": eval_problems[e.num_chains :],
    }


def label_records(chains, scheme: str, separator: str) -> list[dict]:
    from stepjax.data.long_cot import long_cot_prompt
    from stepjax.data.prm_labels import labels_for, prm_record

    records = []
    for chain in chains:
        steps, judgements, final_correct = _judged(chain, separator)
        labels = labels_for(scheme, judgements, final_correct)
        records.append(prm_record(long_cot_prompt(chain.question), steps, labels, final_correct))
    return records


# ---------------------------------------------------------------------------------------------------- training


def _encode_skipping(records, tokenizer, separator: str, seq_len: int) -> tuple[list[dict], int]:
    """Unpadded examples of the records that fit in ``seq_len`` tokens, and how many did not (skipped, warned)."""
    from stepjax.data.prm_encoding import encode_prm_example

    examples, skipped = [], 0
    for i, r in enumerate(records):
        ex = encode_prm_example(r["prompt"], r["steps"], r["labels"], tokenizer, separator=separator, seq_len=None)
        if len(ex["tokens"]) > seq_len:
            skipped += 1
            logger.warning(
                "skipping training record %d: %d tokens, more than seq_len=%d", i, len(ex["tokens"]), seq_len
            )
        else:
            examples.append(ex)
    return examples, skipped


def _batches(config, examples, order, pad_id: int):
    """Fixed-shape training batches: packed (``train.packed_rows`` > 0) or one padded row per solution; yields
    ``(batch, solutions in it)``."""
    import numpy as np

    from stepjax.data.prm_encoding import packed_batches

    t, seq_len = config.train, config.data.seq_len
    if t.packed_rows:
        yield from packed_batches(
            examples, order, examples_per_batch=t.batch_size, rows=t.packed_rows, seq_len=seq_len, pad_id=pad_id
        )
        return
    order = iter(order)
    while True:
        batch = {
            "tokens": np.full((t.batch_size, seq_len), pad_id, np.int32),
            "labels": np.zeros((t.batch_size, seq_len), np.int32),
            "step_mask": np.zeros((t.batch_size, seq_len), np.float32),
        }
        for row in range(t.batch_size):
            ex = examples[next(order)]
            for k in batch:
                batch[k][row, : len(ex[k])] = ex[k]
        yield batch, t.batch_size


def _model_config(config, tokenizer):
    from stepjax.models.llm import LLMConfig

    return LLMConfig(**{**config.model.to_dict(), "vocab_size": config.model.vocab_size or tokenizer.vocab_size})


def warm_start_lm(config, chains, seed: int, workdir: str, tokenizer, compiled: dict) -> tuple[Any, dict]:
    """Next-token training of the trunk on the generator's chains (prompt masked out), the stand-in for the
    paper's pretrained base LM. Returns ``(trunk params, info)``."""
    import jax
    import numpy as np
    from flax import nnx

    from stepjax.data.long_cot import long_cot_prompt, render_response
    from stepjax.data.prm_encoding import pack_prm_examples, packed_batches
    from stepjax.models.llm import DecoderLM
    from stepjax.train import MetricWriter, create_train_state, lm_loss_fn, make_optimizer, make_train_step

    w = config.warm_start
    examples = []
    for chain in chains:
        prompt = [tokenizer.bos_id, *tokenizer.encode(long_cot_prompt(chain.question))]
        ids = prompt + tokenizer.encode(render_response(chain, separator=config.data.separator)) + [tokenizer.eos_id]
        if len(ids) - 1 <= config.data.seq_len:
            mask = np.zeros(len(ids) - 1, np.float32)
            mask[len(prompt) - 1 :] = 1.0  # the response and EOS
            examples.append(
                {"inputs": np.asarray(ids[:-1], np.int32), "targets": np.asarray(ids[1:], np.int32), "loss_mask": mask}
            )
    opt = {**config.optimizer.to_dict(), "learning_rate": w.learning_rate}
    tx, schedule = make_optimizer(opt, w.steps)
    model_cfg = _model_config(config, tokenizer)
    graphdef, state = create_train_state(lambda rngs: DecoderLM(model_cfg, rngs=rngs), tx, seed=seed + 1)
    if "lm_step" not in compiled:
        step = make_train_step(graphdef, lm_loss_fn(), tx, loss_weights={"lm": 1.0}, schedule=schedule)
        compiled["lm_step"] = jax.jit(step, donate_argnums=(0,))
    order_rng = np.random.default_rng(seed + 31)
    epochs = w.steps * w.batch_size // len(examples) + 2
    order = np.concatenate([order_rng.permutation(len(examples)) for _ in range(epochs)])
    rows = (
        max(1, (w.batch_size * config.train.packed_rows) // config.train.batch_size) if config.train.packed_rows else 0
    )
    if rows:
        batches = (
            b
            for b, _ in packed_batches(
                examples,
                order,
                examples_per_batch=w.batch_size,
                rows=rows,
                seq_len=config.data.seq_len,
                pad_id=tokenizer.pad_id,
            )
        )
    else:
        batches = (
            pack_prm_examples(
                [examples[i] for i in order[k * w.batch_size : (k + 1) * w.batch_size]],
                config.data.seq_len,
                pad_id=tokenizer.pad_id,
                min_rows=w.batch_size,
            )[0]
            for k in range(w.steps)
        )
    start = time.time()
    with MetricWriter(workdir, tensorboard=False) as writer:
        for i in range(w.steps):
            state, metrics = compiled["lm_step"](state, next(batches))
            if (i + 1) % config.train.log_every == 0 or i + 1 == w.steps:
                record = writer.write(i + 1, metrics)
    jax.block_until_ready(state.params)
    params = nnx.state(nnx.merge(graphdef, state.params, state.extra), nnx.Param)
    return params, {"warm_start_s": round(time.time() - start, 1), "warm_start_accuracy": record.get("accuracy")}


def train_prm(
    config, records, seed: int, workdir: str, tokenizer, compiled: dict, trunk_params: Any = None
) -> tuple[Any, Any, dict]:
    """Trains one PRM on ``records``; returns ``(graphdef, state, info)``. ``compiled`` caches the jitted step."""
    import jax
    import numpy as np
    from flax import nnx

    from stepjax.models.llm import DecoderLM
    from stepjax.rl.prm_model import StepRewardModel, prm_loss_fn
    from stepjax.train import MetricWriter, create_train_state, make_optimizer, make_train_step

    t = config.train
    examples, skipped = _encode_skipping(records, tokenizer, config.data.separator, config.data.seq_len)
    model_cfg = _model_config(config, tokenizer)
    tx, schedule = make_optimizer(config.optimizer.to_dict(), t.total_steps)

    def make(rngs):
        trunk = DecoderLM(model_cfg, rngs=rngs)
        if trunk_params is not None:
            nnx.update(trunk, trunk_params)
        return StepRewardModel(trunk, rngs=rngs, init_scale=config.prm.init_scale)

    graphdef, state = create_train_state(make, tx, seed=seed)
    if "step" not in compiled:
        loss_fn = prm_loss_fn(
            train_on_last_step_only=config.prm.train_on_last_step_only, aggregation=config.prm.aggregation
        )
        step = make_train_step(
            graphdef, loss_fn, tx, loss_weights={"prm": 1.0}, num_micro_batches=t.num_micro_batches, schedule=schedule
        )
        compiled["step"] = jax.jit(step, donate_argnums=(0,))
    step_fn = compiled["step"]
    # The same order of solutions for every scheme of a seed (FE examples are the same chains, cut shorter).
    order_rng = np.random.default_rng(seed + 7919)
    n = len(examples)
    order = np.concatenate([order_rng.permutation(n) for _ in range(t.total_steps * t.batch_size // n + 2)])
    batches = _batches(config, examples, order, tokenizer.pad_id)
    start, solutions = time.time(), 0
    with MetricWriter(workdir, tensorboard=False) as writer:
        for i in range(t.total_steps):
            batch, count = next(batches)
            solutions += count
            state, metrics = step_fn(state, batch)
            if (i + 1) % t.log_every == 0 or i + 1 == t.total_steps:
                record = writer.write(i + 1, metrics)
                if record.get("nonfinite") or record.get("loss") is None:
                    raise FloatingPointError(f"non-finite PRM loss at step {i + 1} ({workdir})")
    jax.block_until_ready(state.params)
    info = {
        "train_s": round(time.time() - start, 1),
        "records": n,
        "solutions_per_step": solutions / t.total_steps,
        "skipped_overlong": skipped,
        "labelled_steps": int(sum(ex["step_mask"].sum() for ex in examples)),
        "positive_rate": float(
            sum((ex["labels"] * ex["step_mask"]).sum() for ex in examples)
            / sum(ex["step_mask"].sum() for ex in examples)
        ),
        "final_loss": record["prm"],
    }
    return graphdef, state, info


# ---------------------------------------------------------------------------------------------------- evaluation


def evaluate(config, score, datasets, seed: int) -> dict[str, Any]:
    """Step metrics, best-of-N and step search for one trained PRM (``score`` as from ``make_step_scorer``)."""
    import numpy as np

    from stepjax.data.long_cot import judge_steps, long_cot_prompt, next_step, sample_chain, state_after
    from stepjax.data.prm_labels import ep_ec_labels
    from stepjax.evals.best_of_n import best_of_n_accuracy, oracle_accuracy
    from stepjax.evals.step_classification import step_classification_metrics
    from stepjax.evals.step_search import prm_step_search

    d, e = config.data, config.eval
    sep = d.separator
    out: dict[str, Any] = {}
    # Step level: truth = the EP/EC labels of the generator's own flags (what each step really is).
    chains = datasets["eval_chains"]
    items, labels, after_error, self_correcting = [], [], [], []
    for c in chains:
        steps, judgements, final_correct = _judged(c, sep)
        items.append((long_cot_prompt(c.question), steps))
        labels.append(ep_ec_labels(judgements, final_correct))
        seen_error = np.cumsum([j.own_error for j in judgements]) - np.asarray([j.own_error for j in judgements])
        after_error.append([bool(s) for s in seen_error > 0])
        self_correcting.append([any(j.corrects for j in judgements)] * len(steps))
    scores = score(items)
    out["step"] = step_classification_metrics(scores, labels, threshold=e.threshold)
    post = [[a and y == 1 for a, y in zip(ar, yr, strict=True)] for ar, yr in zip(after_error, labels, strict=True)]
    out["post_error_correct_recall"] = step_classification_metrics(scores, labels, threshold=e.threshold, include=post)[
        "recall"
    ]
    # the negative class: how many truly wrong steps (own errors and propagation) the PRM flags
    flipped = [[1.0 - x for x in row] for row in scores]
    out["wrong_step_recall"] = step_classification_metrics(
        flipped, [[1 - y for y in row] for row in labels], threshold=1.0 - e.threshold
    )["recall"]
    out["self_correcting_f1"] = step_classification_metrics(
        scores, labels, threshold=e.threshold, include=self_correcting
    )["f1"]
    # Best-of-N: candidates from the generator, fixed per seed (same candidates for every scheme).
    cand_rng = np.random.default_rng(seed + 104729)
    gen = _generator_kwargs(d)
    problems = datasets["problems"]
    candidates = [[sample_chain(cand_rng, p, **gen) for _ in range(e.candidates)] for p in problems]
    flat = [(long_cot_prompt(c.question), [s.text for s in c.steps]) for row in candidates for c in row]
    flat_scores = score(flat)
    cand_scores = [flat_scores[i * e.candidates : (i + 1) * e.candidates] for i in range(len(problems))]
    correct = [[c.correct for c in row] for row in candidates]
    out["best_of_n"] = {
        str(n): best_of_n_accuracy(cand_scores, correct, n, aggregation=e.aggregation) for n in e.best_of_n
    }
    out["best_of_n_min"] = {str(n): best_of_n_accuracy(cand_scores, correct, n, aggregation="min") for n in e.best_of_n}
    out["oracle_pass_at_n"] = {str(n): oracle_accuracy(correct, n) for n in e.best_of_n}
    # PRM@N-step: the generator proposes N next steps from the chosen prefix; the PRM keeps the best.
    search_rng = np.random.default_rng(seed + 1299709)

    def propose(i, prefix, n):
        numbers = problems[i]
        state = state_after(numbers, judge_steps(numbers, prefix))
        options = []
        for _ in range(n):
            step = next_step(search_rng, numbers, state, **gen)
            options.append(None if step is None else step[0].text)
        return options

    prompts = [long_cot_prompt("+".join(map(str, p))) for p in problems]
    out["step_search"] = {}
    for n in e.step_search_n:
        chosen = prm_step_search(prompts, propose, score, n=n, max_steps=2 * d.max_terms)
        hits = []
        for p, steps in zip(problems, chosen, strict=True):
            judged = judge_steps(p, steps) if steps else []
            hits.append(bool(judged) and judged[-1].consumed == len(p) and judged[-1].value == sum(p))
        out["step_search"][str(n)] = float(np.mean(hits))
    return out


# ---------------------------------------------------------------------------------------------------- the run


def _flat_metrics(result: dict) -> dict[str, float]:
    m = {f"step_{k}": v for k, v in result["step"].items() if k in ("precision", "recall", "f1", "accuracy")}
    m["post_error_correct_recall"] = result["post_error_correct_recall"]
    m["self_correcting_f1"] = result["self_correcting_f1"]
    m["wrong_step_recall"] = result["wrong_step_recall"]
    m.update({f"best_of_{n}": v for n, v in result["best_of_n"].items()})
    m.update({f"best_of_{n}_min": v for n, v in result["best_of_n_min"].items()})
    m.update({f"prm_at_{n}_step": v for n, v in result["step_search"].items()})
    return m


def run(config: ml_collections.ConfigDict, workdir: str) -> int:
    """Trains and evaluates every scheme on every seed; writes the summary, table and plot. Returns the exit status."""
    from stepjax.data.tokenizers import ByteTokenizer
    from stepjax.rl.prm_model import make_step_scorer

    os.makedirs(workdir, exist_ok=True)
    tokenizer = ByteTokenizer()
    score_len = _max_chain_length(config.data)
    compiled: dict = {}
    per_seed: dict[str, dict] = {}
    for seed in config.seeds:
        seed_dir = os.path.join(workdir, f"seed_{seed}")
        t0 = time.time()
        datasets = make_datasets(config, seed)
        kinds = {k: sum(c.kind == k for c in datasets["train"]) for k in ("clean", "propagation", "cessation")}
        seed_result: dict[str, Any] = {"train_chain_kinds": kinds, "data_s": round(time.time() - t0, 1)}
        trunk = None
        if config.warm_start.steps:
            trunk, info = warm_start_lm(
                config, datasets["train"], seed, os.path.join(seed_dir, "warm_start"), tokenizer, compiled
            )
            seed_result.update(info)
            print(
                f"seed {seed}: warm start {info['warm_start_s']} s, next-token accuracy {info['warm_start_accuracy']}"
            )
        for scheme in config.labels:
            records = label_records(datasets["train"], scheme, config.data.separator)
            try:
                graphdef, state, info = train_prm(
                    config, records, seed, os.path.join(seed_dir, scheme), tokenizer, compiled, trunk
                )
            except FloatingPointError as err:
                print(f"error: {err}")
                return 3
            t1 = time.time()
            score = make_step_scorer(
                graphdef,
                state.params,
                state.extra,
                tokenizer,
                separator=config.data.separator,
                seq_len=score_len,
                batch_size=config.eval.batch_size,
            )
            result = evaluate(config, score, datasets, seed)
            result.update(info, eval_s=round(time.time() - t1, 1))
            seed_result[scheme] = result
            m = _flat_metrics(result)
            print(
                f"seed {seed} {SCHEME_NAMES[scheme]}: step F1 {m['step_f1']:.3f} (P {m['step_precision']:.3f} "
                f"R {m['step_recall']:.3f}), post-error recall {m['post_error_correct_recall']:.3f}, "
                f"best-of-{max(config.eval.best_of_n)} {m[f'best_of_{max(config.eval.best_of_n)}']:.3f}; "
                f"train {info['train_s']} s, eval {result['eval_s']} s"
            )
        with open(os.path.join(seed_dir, "results.json"), "w") as f:
            json.dump(seed_result, f, indent=1)
        per_seed[str(seed)] = seed_result
    summary = _summarize(config, per_seed)
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    table = _table(config, summary)
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(table)
    png = _plot(config, summary, per_seed, workdir)
    print(table)
    print(f"done: {len(config.seeds)} seed(s); table {os.path.join(workdir, 'results.md')}; plot {png}")
    return 0


def _summarize(config, per_seed: dict) -> dict:
    import numpy as np

    summary: dict[str, Any] = {"seeds": list(config.seeds), "per_seed": {}, "mean": {}, "std": {}}
    for scheme in config.labels:
        rows = {s: _flat_metrics(r[scheme]) for s, r in per_seed.items()}
        summary["per_seed"][scheme] = rows
        keys = next(iter(rows.values())).keys()
        summary["mean"][scheme] = {k: float(np.mean([r[k] for r in rows.values()])) for k in keys}
        # spread over seeds: sample std (ddof 1) when there are several seeds
        summary["std"][scheme] = {
            k: float(np.std([r[k] for r in rows.values()], ddof=1)) if len(rows) > 1 else 0.0 for k in keys
        }
        summary["mean"][scheme]["train_s"] = float(np.mean([r[scheme]["train_s"] for r in per_seed.values()]))
        summary["mean"][scheme]["eval_s"] = float(np.mean([r[scheme]["eval_s"] for r in per_seed.values()]))
    first = next(iter(per_seed.values()))
    summary["oracle_pass_at_n"] = first[config.labels[0]]["oracle_pass_at_n"]
    summary["generator_accuracy"] = first[config.labels[0]]["best_of_n"].get("1")
    return summary


def _table(config, summary: dict) -> str:
    keys = ["step_precision", "step_recall", "step_f1", "wrong_step_recall", "post_error_correct_recall"]
    keys += ["self_correcting_f1"]
    keys += [f"best_of_{n}" for n in config.eval.best_of_n] + [f"prm_at_{n}_step" for n in config.eval.step_search_n]
    lines = [
        f"PRM on synthetic long-CoT chains, mean ± std over seeds {list(config.seeds)}",
        "",
        "| metric | " + " | ".join(SCHEME_NAMES[s] for s in config.labels) + " |",
        "|---|" + "---|" * len(config.labels),
    ]
    for k in keys:
        cells = [f"{summary['mean'][s][k]:.3f} ± {summary['std'][s][k]:.3f}" for s in config.labels]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    seeds = [str(s) for s in config.seeds]
    for k in ("step_f1", f"best_of_{16 if 16 in config.eval.best_of_n else max(config.eval.best_of_n)}"):
        for s in config.labels:
            per = ", ".join(f"{summary['per_seed'][s][seed][k]:.3f}" for seed in seeds)
            lines.append(f"| {k} per seed ({SCHEME_NAMES[s]}) | {per} |" + " |" * (len(config.labels) - 1))
    lines += ["", f"oracle pass@N of the candidates (seed {seeds[0]}): " + json.dumps(summary["oracle_pass_at_n"])]
    for s in config.labels:
        lines.append(
            f"wall time {SCHEME_NAMES[s]}: train {summary['mean'][s]['train_s']:.0f} s, "
            f"eval {summary['mean'][s]['eval_s']:.0f} s per seed"
        )
    return "\n".join(lines) + "\n"


def _plot(config, summary: dict, per_seed: dict, workdir: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from stepjax.train.metrics import iter_scalars, read_metrics

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), dpi=100)
    colors = {"first_error": "tab:orange", "ep_ec": "tab:blue"}
    for scheme in config.labels:
        for i, seed in enumerate(per_seed):
            records = read_metrics(os.path.join(workdir, f"seed_{seed}", scheme, "metrics.jsonl"))
            steps, values = zip(*iter_scalars(records, "prm"), strict=True)
            axes[0].plot(steps, values, color=colors[scheme], alpha=0.7, label=SCHEME_NAMES[scheme] if i == 0 else None)
    axes[0].set(title="training BCE (own labels)", xlabel="step", ylabel="loss")
    ns = list(config.eval.best_of_n)
    for scheme in config.labels:
        mean = [summary["mean"][scheme][f"best_of_{n}"] for n in ns]
        std = [summary["std"][scheme][f"best_of_{n}"] for n in ns]
        axes[1].errorbar(ns, mean, yerr=std, marker="o", capsize=3, color=colors[scheme], label=SCHEME_NAMES[scheme])
    axes[1].plot(ns, [summary["oracle_pass_at_n"][str(n)] for n in ns], "k--", label="oracle pass@N")
    axes[1].set(xscale="log", title="Best-of-N accuracy (final-step score)", xlabel="N", ylabel="accuracy")
    axes[1].set_xticks(ns, [str(n) for n in ns])
    bars = ["step_f1", "post_error_correct_recall", "self_correcting_f1"]
    bars += [f"prm_at_{n}_step" for n in config.eval.step_search_n]
    x = np.arange(len(bars))
    width = 0.8 / len(config.labels)
    for j, scheme in enumerate(config.labels):
        axes[2].bar(
            x + j * width,
            [summary["mean"][scheme][b] for b in bars],
            width,
            yerr=[summary["std"][scheme][b] for b in bars],
            color=colors[scheme],
            label=SCHEME_NAMES[scheme],
            capsize=2,
        )
    axes[2].set_xticks(x + width * (len(config.labels) - 1) / 2, bars, rotation=25, ha="right", fontsize=8)
    axes[2].set(title="step metrics and PRM@N-step", ylim=(0, 1.05))
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"PRM: FE vs EP/EC labels, mean ± std over {len(per_seed)} seed(s)")
    fig.tight_layout()
    png = os.path.join(workdir, "prm.png")
    fig.savefig(png)
    plt.close(fig)
    return png

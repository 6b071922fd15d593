"""Recipe ``orz_rl``: Open-Reasoner-Zero-style RL on the arithmetic task — an SFT warm start, then PPO or GRPO.

Stage 1 (``warm_start``) is the ``lm_sft`` recipe on noisy traces (``data.wrong_step_fraction`` random slips and
``data.carry_drop_fraction`` of traces with a systematic dropped-carry habit), in ``<workdir>/warm_start``.
Stage 2 (``rl``) starts the policy (and, for PPO, the critic's trunk, as ORZ does) from those weights and runs
``stepjax.rl.make_rl_step`` under ``stepjax.train.run_training`` in ``<workdir>/rl``: rollouts of
``prompts_per_iteration x samples_per_prompt`` completions, ORZ's rule reward, advantages, updates. Both stages
checkpoint and resume (a rerun with the same workdir continues where it stopped).

Held-out score ``eval/accuracy``: the mean ORZ reward of one temperature-1 sample per held-out prompt (what RL
optimises); ``eval/greedy_accuracy`` and ``eval/format_rate`` beside it. Curves: ``<workdir>/rl_curve.png``.
"""

from __future__ import annotations

import json
import os
from typing import Any, NamedTuple

import ml_collections

from recipes import lm_sft
from recipes.stage import run_stage, stage_outcome
from stepjax.train import config_check as cc
from stepjax.train import defaults


def schema() -> ml_collections.ConfigDict:
    """Every key this recipe understands, with its default."""
    base = lm_sft.schema()
    config = ml_collections.ConfigDict()
    config.recipe = "orz_rl"
    config.seed = 0
    config.model = base.model
    config.tokenizer = base.tokenizer
    config.data = base.data
    config.data.update(wrong_step_fraction=0.3, carry_drop_fraction=0.8)
    config.warm_start = dict(
        steps=1000,  # SFT steps before RL (500 left random copy slips that 300 PPO iterations did not clean up)
        batch_size=64,
        learning_rate=3e-3,
        warmup_steps=30,
        eval_examples=200,
    )
    config.rl = dict(
        algorithm="ppo",
        iterations=300,
        prompts_per_iteration=32,
        samples_per_prompt=8,
        max_new_tokens=64,
        temperature=1.0,
        prompt_width=16,
        reward_fns=("orz_math",),
        gamma=1.0,
        lam=1.0,
        whiten_advantages=True,
        clip_eps=0.2,
        clip_eps_high=0.0,  # 0: same as clip_eps
        value_clip=0.2,  # 0: unclipped value loss
        policy_epochs=1,
        policy_minibatches=4,
        critic_epochs=1,
        critic_minibatches=4,
        aggregation="token_mean",
        group_scale="group",
        policy_learning_rate=3e-4,
        critic_learning_rate=2e-3,
        warmup_steps=10,  # optimizer steps
        lr_schedule="warmup_cosine",  # or warmup_constant / warmup_linear; decays over all optimizer steps
        end_lr_ratio=0.1,  # floor of a decaying schedule, as a fraction of the peak
        grad_clip_norm=1.0,
    )
    config.eval = dict(num_examples=200, every=50)
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
    cc.check_choice(config, "config.rl.algorithm", ("ppo", "grpo"))
    cc.check_choice(config, "config.rl.group_scale", ("group", "batch", "none"))
    cc.check_choice(config, "config.rl.lr_schedule", ("warmup_constant", "warmup_cosine", "warmup_linear"))
    cc.check_choice(config, "config.train.nonfinite", ("error", "skip"))
    cc.check_positive(
        config,
        "config.rl.iterations",
        "config.rl.prompts_per_iteration",
        "config.rl.samples_per_prompt",
        "config.rl.max_new_tokens",
        "config.rl.prompt_width",
        "config.rl.policy_learning_rate",
        "config.eval.num_examples",
    )
    rows = config.rl.prompts_per_iteration * config.rl.samples_per_prompt
    for key in ("policy_minibatches", "critic_minibatches"):
        if rows % config.rl[key]:
            raise cc.ConfigError(
                f"'config.rl.{key}' ({config.rl[key]}) must divide the rollout's {rows} rows "
                "(prompts_per_iteration x samples_per_prompt)"
            )
    if config.rl.prompt_width + config.rl.max_new_tokens > config.model.max_seq_len:
        raise cc.ConfigError(
            f"'config.rl.prompt_width' + 'config.rl.max_new_tokens' ({config.rl.prompt_width} + "
            f"{config.rl.max_new_tokens}) exceeds 'config.model.max_seq_len' ({config.model.max_seq_len})"
        )
    from stepjax.rl import REWARDS

    for name in config.rl.reward_fns:
        if name not in REWARDS.names():
            raise cc.ConfigError(f"'config.rl.reward_fns': unknown reward {name!r}; known: {REWARDS.names()}")
    lm_sft.validate(_warm_start_config(config))


def _warm_start_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The ``lm_sft`` config of stage 1 (the recipe's own data section)."""
    sft = lm_sft.stage_config(config, sections=("data",))
    sft.eval.update(num_examples=config.warm_start.eval_examples, max_new_tokens=config.rl.max_new_tokens)
    return sft


def _rl_config(config: ml_collections.ConfigDict):
    from stepjax.rl.trainer import RLConfig

    r = config.rl
    return RLConfig(
        algorithm=r.algorithm,
        prompt_width=r.prompt_width,
        reward_fns=tuple(r.reward_fns),
        gamma=r.gamma,
        lam=r.lam,
        whiten_advantages=r.whiten_advantages,
        clip_eps=r.clip_eps,
        clip_eps_high=r.clip_eps_high or None,
        value_clip=r.value_clip or None,
        policy_epochs=r.policy_epochs,
        policy_minibatches=r.policy_minibatches,
        critic_epochs=r.critic_epochs,
        critic_minibatches=r.critic_minibatches,
        aggregation=r.aggregation,
        group_scale=r.group_scale,
    )


def rl_optimizers(config: ml_collections.ConfigDict):
    """``((policy_tx, policy_schedule), (critic_tx, critic_schedule))``. A schedule counts optimizer steps, so it
    spans ``iterations x minibatches x epochs`` of its model (a decaying one reaches its floor at the last update)."""
    r = config.rl
    return (
        _optimizer(r.policy_learning_rate, config, r.iterations * r.policy_minibatches * r.policy_epochs),
        _optimizer(r.critic_learning_rate, config, r.iterations * r.critic_minibatches * r.critic_epochs),
    )


def _optimizer(learning_rate: float, config: ml_collections.ConfigDict, total: int):
    """AdamW as ORZ runs it; ``total`` counts optimizer steps (iterations x mini-batches x epochs), which a decaying
    ``rl.lr_schedule`` spans."""
    from stepjax.train import make_optimizer

    return make_optimizer(
        dict(
            name="adamw",
            learning_rate=learning_rate,
            schedule=config.rl.lr_schedule,
            warmup_steps=config.rl.warmup_steps,
            end_lr_ratio=config.rl.end_lr_ratio,
            b1=0.9,
            b2=0.95,  # ORZ
            weight_decay=0.0,
            grad_clip_norm=config.rl.grad_clip_norm,
        ),
        total,
    )


class RLSetup(NamedTuple):
    """What ``init_rl`` builds: the initial ``RLState`` and what ``make_rl_step`` needs beside it."""

    state: Any  # stepjax.rl.trainer.RLState
    policy_graphdef: Any
    policy_tx: Any
    policy_schedule: Any
    critic_graphdef: Any  # None for GRPO
    critic_tx: Any  # None for GRPO


def init_rl(config: ml_collections.ConfigDict, model_cfg: Any, warm_params: Any) -> RLSetup:
    """The policy from the warm-start weights ``warm_params`` and, for PPO, a critic (decoder trunk + scalar head)
    whose trunk starts from the same weights, as ORZ does; fresh optimizer states (``rl_optimizers``); the RL PRNG
    key from ``config.seed``. Shared by the recipes that run ``make_rl_step`` after a warm start."""
    import jax
    import jax.numpy as jnp

    from stepjax.models.llm import DecoderLM
    from stepjax.rl.trainer import RLState
    from stepjax.rl.value_head import ValueModel
    from stepjax.sharding import make_mesh, normalize_rules
    from stepjax.train import create_train_state

    mesh = make_mesh(config.mesh.shape.to_dict())
    rules = normalize_rules(config.sharding.rules)
    (policy_tx, policy_schedule), (ppo_critic_tx, _) = rl_optimizers(config)
    policy_graphdef, policy = create_train_state(
        lambda rngs: DecoderLM(model_cfg, rngs=rngs), policy_tx, seed=config.seed, mesh=mesh, rules=rules
    )
    policy = policy.replace(params=warm_params, opt_state=policy_tx.init(warm_params))
    critic_graphdef = critic_tx = None
    critic: Any = jnp.zeros((), jnp.int32)
    if config.rl.algorithm == "ppo":
        critic_tx = ppo_critic_tx
        critic_graphdef, critic = create_train_state(
            lambda rngs: ValueModel(DecoderLM(model_cfg, rngs=rngs), rngs=rngs),
            critic_tx,
            seed=config.seed + 1,
            mesh=mesh,
            rules=rules,
        )
        params = critic.params
        params["trunk"] = jax.tree.map(jnp.copy, warm_params)
        critic = critic.replace(params=params, opt_state=critic_tx.init(params))
    state = RLState(
        step=jnp.zeros((), jnp.int32),
        policy=policy,
        critic=critic,
        rng=jax.random.key_data(jax.random.key(config.seed + 2)),
    )
    return RLSetup(state, policy_graphdef, policy_tx, policy_schedule, critic_graphdef, critic_tx)


def run(config: ml_collections.ConfigDict, workdir: str) -> int:
    """Warm start, RL, plots; returns the process exit status."""
    import jax
    import numpy as np

    from stepjax.rl.rollout import PromptIterator
    from stepjax.rl.trainer import make_rl_step
    from stepjax.sampling import SamplingConfig
    from stepjax.train import plot_metrics

    status, _, sft_state = lm_sft.train_unless_preempted(
        _warm_start_config(config), os.path.join(workdir, "warm_start")
    )
    if sft_state is None:
        return status
    tokenizer = lm_sft._tokenizer(config)
    model_cfg = lm_sft.model_config(config, tokenizer.vocab_size)
    r = config.rl
    setup = init_rl(config, model_cfg, sft_state.params)
    state, policy_graphdef = setup.state, setup.policy_graphdef

    sampling = SamplingConfig(
        max_new_tokens=r.max_new_tokens,
        temperature=r.temperature,
        num_samples=r.samples_per_prompt,
        stop_tokens=(tokenizer.eos_id,),
        pad_id=tokenizer.pad_id,
    )
    rl_step = make_rl_step(
        _rl_config(config),
        sampling,
        tokenizer,
        policy_graphdef,
        setup.policy_tx,
        critic_graphdef=setup.critic_graphdef,
        critic_tx=setup.critic_tx,
        policy_schedule=setup.policy_schedule,
    )
    train_records = list(lm_sft._records(config, "train", config.data.num_train))
    eval_source = lm_sft._records(config, "test", config.eval.num_examples)
    eval_records = [eval_source[i] for i in range(min(len(eval_source), config.eval.num_examples))]
    prompts = PromptIterator(train_records, r.prompts_per_iteration, seed=config.seed)
    eval_fn = _make_eval(policy_graphdef, tokenizer, eval_records, r, sampling, os.path.join(workdir, "rl"))
    print(
        f"orz_rl: {r.algorithm} for {r.iterations} iterations of {r.prompts_per_iteration} prompts x "
        f"{r.samples_per_prompt} samples; held-out {len(eval_records)} prompts; workdir {workdir}"
    )
    rl_dir = os.path.join(workdir, "rl")
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
        metrics_path = os.path.join(rl_dir, "metrics.jsonl")
        png = plot_metrics(
            metrics_path,
            os.path.join(workdir, "rl_curve.png"),
            keys=("reward/mean",),
            eval_keys=("eval/accuracy", "eval/greedy_accuracy"),
            title=f"orz_rl ({r.algorithm}): train reward and held-out accuracy",
            log_scale=False,
            shared_axis=True,
        )
        before = lm_sft._last_eval(os.path.join(workdir, "warm_start", "metrics.jsonl"))
        evals = _eval_rows(metrics_path)
        first, last = evals[0] if evals else {}, evals[-1] if evals else {}
        summary = {
            "warm_start/greedy_accuracy": before.get("eval/accuracy"),
            "rl/first_eval": first,
            "rl/final_eval": last,
        }
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)
        print(
            f"done: iteration {int(np.asarray(state.step))}; held-out accuracy (T=1) "
            f"{first.get('eval/accuracy', float('nan')):.3f} -> {last.get('eval/accuracy', float('nan')):.3f}, "
            f"greedy {first.get('eval/greedy_accuracy', float('nan')):.3f} -> "
            f"{last.get('eval/greedy_accuracy', float('nan')):.3f}, format rate "
            f"{last.get('eval/format_rate', float('nan')):.3f}; curve {png}; workdir {workdir}"
        )
    return 0


def _make_eval(graphdef, tokenizer, records: list[dict], r, sampling, out_dir: str) -> Any:
    """``eval_fn(state, step)``: one temperature-``r.temperature`` sample and one greedy completion per prompt; the
    completions go to ``out_dir/eval_samples.jsonl`` (one line per prompt and eval) for error analysis."""
    import jax
    import numpy as np

    from stepjax.rl.rollout import collect_rollout

    def eval_fn(state, step: int) -> dict[str, float]:
        params = (state.policy.params, state.policy.extra)
        key = jax.random.fold_in(jax.random.key(1234), step)
        out: dict[str, float] = {}
        for name, cfg in (
            ("", sampling.replace(num_samples=1)),
            ("greedy_", sampling.replace(num_samples=1, greedy=True)),
        ):
            rollout = collect_rollout(
                graphdef,
                params,
                records,
                tokenizer,
                cfg,
                key,
                prompt_width=r.prompt_width,
                reward_fns=("orz_math", "answer_format"),
            )
            per = rollout.scored.per_function
            out[f"{name}accuracy"] = float(np.mean(per["orz_math"]))
            out[f"{name}format_rate"] = float(np.mean(per["answer_format"]))
            if jax.process_index() == 0:
                os.makedirs(out_dir, exist_ok=True)
                with open(os.path.join(out_dir, "eval_samples.jsonl"), "a") as f:
                    for rec, text, score in zip(records, rollout.completions, per["orz_math"], strict=True):
                        row = {"step": step, "mode": name.rstrip("_") or "sample", "question": rec.get("question")}
                        row.update(completion=text, ground_truth=rec.get("ground_truth"), reward=float(score))
                        f.write(json.dumps(row) + "\n")
        print(f"iteration {step}: held-out accuracy {out['accuracy']:.3f} (greedy {out['greedy_accuracy']:.3f})")
        return out

    return eval_fn


def _eval_rows(jsonl_path: str) -> list[dict[str, float]]:
    rows = []
    with open(jsonl_path) as f:
        for line in f:
            row = json.loads(line)
            if "eval/accuracy" in row:
                rows.append(row)
    return rows

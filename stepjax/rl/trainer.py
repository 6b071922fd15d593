"""The colocated RL loop for language models: rollout -> reward -> advantage -> update, as one "step".

``make_rl_step`` returns ``step(state, prompt_records) -> (state, metrics)`` for ``stepjax.train.run_training``:
one call is one RL iteration, so the training loop's checkpoints (state and prompt-iterator position), progress
bar, metrics files, SIGTERM handling and evaluation serve RL unchanged, and a killed run resumes where it stopped.

Two algorithms share it:

* ``ppo`` (Open-Reasoner-Zero): a separate critic (``ValueModel``), GAE (ORZ: ``gamma = lam = 1``, so
  ``A_t = R - V(s_t)``), advantages whitened over every response token of the rollout, the critic updated first
  (``critic_epochs x critic_minibatches`` steps), then the policy (``policy_epochs x policy_minibatches``), both from
  the pre-update values; clipped policy loss (``stepjax.objectives.ppo``), clipped value loss.
* ``grpo``: no critic; group advantages over the ``num_samples`` completions of each prompt
  (``stepjax.rl.advantages.group_advantages``) and the GRPO loss (``stepjax.objectives.grpo``).

The sampler's log-probs of the sampled tokens are the rollout policy's (``old_logprobs``); they equal a training
forward pass on the same tokens (tested in ``tests/sampling``), so no extra forward pass is spent on them.

Each model's optimizer steps of one iteration run as one jitted ``lax.scan`` over its mini-batches
(``make_minibatch_updates``), and each step accumulates gradients over slices of at most
``RLConfig.micro_batch_tokens`` tokens: on CPU, activations that stay in cache made the tiny recipes' updates ~35%
faster. Both give the same updates as separate steps on whole mini-batches, up to float reassociation (tested).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct

from stepjax.objectives import grpo_loss, ppo_policy_loss, token_log_probs, value_loss
from stepjax.objectives.ppo import explained_variance
from stepjax.rl.advantages import gae_advantages, group_advantages, terminal_rewards, whiten
from stepjax.rl.rollout import Rollout, collect_rollout
from stepjax.sampling import SamplingConfig
from stepjax.train.state import TrainState, merge_model
from stepjax.train.step import make_train_step

ALGORITHMS = ("ppo", "grpo")
#: ``RLConfig.micro_batch_tokens=None`` on CPU. Measured on the tiny GRPO recipe (64 rows x 79 tokens per step):
#: 1264- and 632-token slices took ~35% less CPU time per step than the whole mini-batch, 2528 only ~15% less.
CPU_MICRO_BATCH_TOKENS = 1024


@struct.dataclass
class RLState:
    """``step`` (RL iterations done), the policy's ``TrainState`` and, for PPO, the critic's (GRPO: ``critic`` is
    the policy's step counter, a placeholder that keeps one pytree type)."""

    step: jax.Array
    policy: TrainState
    critic: TrainState | jax.Array
    rng: jax.Array


@dataclasses.dataclass(frozen=True)
class RLConfig:
    """Settings of one RL iteration (see the module docstring).

    Attributes:
      algorithm: ``'ppo'`` or ``'grpo'``.
      prompt_width: prompt token budget (prompts are right-padded to it).
      reward_fns / reward_weights: names registered in ``stepjax.rl.REWARDS`` (or callables) and their weights.
      gamma, lam, whiten_advantages: PPO advantages (ORZ: 1, 1, True).
      clip_eps / clip_eps_high: ratio clip range; value_clip: critic clip (None: unclipped).
      policy_epochs / policy_minibatches, critic_epochs / critic_minibatches: optimizer steps per iteration are
        ``epochs x minibatches``; each epoch reshuffles the rollout's rows.
      aggregation: loss aggregation (``stepjax.objectives.terms``); GRPO also takes TRL loss-type names.
      group_scale / group_eps: GRPO advantage std scaling (``group``, ``batch``, ``none``) and its epsilon.
      entropy_metric: log the policy's token entropy (costs a ``[rows, len, vocab]`` pass; off for big vocabularies).
      micro_batch_tokens: gradient accumulation inside each optimizer step: a mini-batch is split into the fewest
        equal slices of at most this many tokens (rows x row length); the update is unchanged up to float
        reassociation (``stepjax.train.step``). ``None``: ``CPU_MICRO_BATCH_TOKENS`` on CPU, no split on
        accelerators; ``0``: no split.
    """

    algorithm: str = "ppo"
    prompt_width: int = 32
    reward_fns: tuple[str, ...] = ("orz_math",)
    reward_weights: tuple[float, ...] | None = None
    gamma: float = 1.0
    lam: float = 1.0
    whiten_advantages: bool = True
    clip_eps: float = 0.2
    clip_eps_high: float | None = None
    value_clip: float | None = 0.2
    policy_epochs: int = 1
    policy_minibatches: int = 1
    critic_epochs: int = 1
    critic_minibatches: int = 4
    aggregation: str = "token_mean"
    group_scale: str = "group"
    group_eps: float = 1e-4
    entropy_metric: bool = True
    micro_batch_tokens: int | None = None

    def __post_init__(self):
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"RLConfig.algorithm {self.algorithm!r}: expected one of {ALGORITHMS}")
        for name in ("policy_epochs", "policy_minibatches", "critic_epochs", "critic_minibatches", "prompt_width"):
            if getattr(self, name) < 1:
                raise ValueError(f"RLConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.micro_batch_tokens is not None and self.micro_batch_tokens < 0:
            raise ValueError(f"RLConfig.micro_batch_tokens must be None or >= 0, got {self.micro_batch_tokens}")


def _entropy(logits: jax.Array) -> jax.Array:
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def policy_loss_fn(cfg: RLConfig) -> Callable:
    """``loss_fn(model, batch, rng)`` for ``make_train_step``: the PPO or GRPO policy loss on rollout rows."""

    def fn(model: nnx.Module, batch: Mapping[str, jax.Array], rng: jax.Array):
        del rng
        logits = model(batch["inputs"], batch["positions"])
        log_probs = token_log_probs(logits, batch["targets"])
        # A logged metric only (no entropy bonus here): no gradient flows through it, so the backward pass skips it.
        entropy = jax.lax.stop_gradient(_entropy(logits)) if cfg.entropy_metric else None
        if cfg.algorithm == "ppo":
            return ppo_policy_loss(
                log_probs,
                batch["old_logprobs"],
                batch["advantages"],
                batch["loss_mask"],
                clip_eps=cfg.clip_eps,
                clip_eps_high=cfg.clip_eps_high,
                entropy=entropy,
                aggregation=cfg.aggregation,
            )
        return grpo_loss(
            log_probs,
            batch["advantages"],
            batch["loss_mask"],
            old_log_probs=batch["old_logprobs"],
            epsilon=cfg.clip_eps,
            epsilon_high=cfg.clip_eps_high,
            aggregation=cfg.aggregation,
            max_completion_length=batch["loss_mask"].shape[1],
            entropy=entropy,
        )

    return fn


def critic_loss_fn(cfg: RLConfig) -> Callable:
    """``loss_fn(model, batch, rng)``: the (clipped) value loss of a ``ValueModel`` on rollout rows."""

    def fn(model: nnx.Module, batch: Mapping[str, jax.Array], rng: jax.Array):
        del rng
        values = model(batch["inputs"], batch["positions"])
        return value_loss(values, batch["old_values"], batch["returns"], batch["loss_mask"], value_clip=cfg.value_clip)

    return fn


def micro_batches_for(rows: int, row_len: int, max_tokens: int) -> int:
    """The fewest equal slices (a divisor of ``rows``) of at most ``max_tokens`` tokens each (one row per slice when
    even that is over); 1 when ``max_tokens`` is 0."""
    if max_tokens <= 0:
        return 1
    return next((n for n in range(1, rows + 1) if rows % n == 0 and rows // n * row_len <= max_tokens), rows)


def make_minibatch_updates(
    graphdef: nnx.GraphDef,
    loss_fn: Callable,
    tx: optax.GradientTransformation,
    *,
    loss_weights: Mapping[str, float],
    schedule: optax.Schedule | None = None,
    micro_batch_tokens: int = 0,
) -> Callable[[TrainState, Mapping[str, jax.Array], np.ndarray], tuple[TrainState, dict[str, jax.Array]]]:
    """``updates(state, batch, order) -> (state, metrics)``: one optimizer step (``make_train_step``) per row of
    ``order [steps, rows_per_step]`` (indices into ``batch``'s leading axis), all in one jitted ``lax.scan``;
    ``metrics`` are stacked ``[steps]``. ``state`` is donated.

    The same updates as ``jax.jit(make_train_step(...))`` called on ``{k: v[idx]}`` for each ``idx`` in turn, without
    a dispatch, a gather and a host round trip per step. Each step accumulates gradients over
    ``micro_batches_for(rows_per_step, row length, micro_batch_tokens)`` slices; one compiled program per slice count.
    """
    compiled: dict[int, Callable] = {}

    def updates(state: TrainState, batch: Mapping[str, jax.Array], order: np.ndarray):
        order = np.asarray(order, np.int32)
        if order.ndim != 2:
            raise ValueError(f"order must be [steps, rows_per_step] indices, got shape {order.shape}")
        row_len = max([v.shape[1] for v in batch.values() if v.ndim > 1] or [1])
        n = micro_batches_for(order.shape[1], row_len, micro_batch_tokens)
        if n not in compiled:
            train_step = make_train_step(
                graphdef, loss_fn, tx, loss_weights=loss_weights, num_micro_batches=n, schedule=schedule
            )

            def scan_steps(state, batch, order):
                return jax.lax.scan(lambda s, idx: train_step(s, {k: v[idx] for k, v in batch.items()}), state, order)

            compiled[n] = jax.jit(scan_steps, donate_argnums=(0,))
        return compiled[n](state, batch, jnp.asarray(order))

    return updates


def _minibatches(rows: int, parts: int, epochs: int, rng: np.random.Generator) -> list[np.ndarray]:
    if rows % parts:
        raise ValueError(f"{rows} rollout rows do not split into {parts} mini-batches")
    out = []
    for _ in range(epochs):
        out.extend(np.split(rng.permutation(rows), parts))
    return out


def make_rl_step(
    cfg: RLConfig,
    sampling: SamplingConfig,
    tokenizer: Any,
    policy_graphdef: nnx.GraphDef,
    policy_tx: optax.GradientTransformation,
    *,
    critic_graphdef: nnx.GraphDef | None = None,
    critic_tx: optax.GradientTransformation | None = None,
    policy_schedule: optax.Schedule | None = None,
    on_rollout: Callable[[int, Rollout], None] | None = None,
) -> Callable[[RLState, Sequence[dict]], tuple[RLState, dict[str, float]]]:
    """Builds ``step(state, prompt_records) -> (state, metrics)``; one call = one RL iteration.

    Records need ``prompt`` and ``ground_truth``. Metrics (TRL-style names): ``loss`` (policy), ``reward/mean``,
    ``reward/std``, ``reward/<fn>``, ``response_length/mean``, ``truncated_fraction``, ``reward_failures``,
    ``policy/clipfrac_avg``, ``policy/approxkl_avg``, ``policy/entropy_avg``, ``grad_norm``, and for PPO
    ``value_loss``, ``val/explained_variance``, ``val/mean``; ``time/rollout`` and ``time/update`` in seconds;
    ``nonfinite`` (1 when an update was withheld).
    """
    if cfg.algorithm == "ppo" and (critic_graphdef is None or critic_tx is None):
        raise ValueError("PPO needs critic_graphdef and critic_tx (the value model and its optimizer)")
    micro_tokens = cfg.micro_batch_tokens
    if micro_tokens is None:
        micro_tokens = CPU_MICRO_BATCH_TOKENS if jax.default_backend() == "cpu" else 0
    policy_updates = make_minibatch_updates(
        policy_graphdef,
        policy_loss_fn(cfg),
        policy_tx,
        loss_weights={cfg.algorithm: 1.0},
        schedule=policy_schedule,
        micro_batch_tokens=micro_tokens,
    )
    critic_updates = None
    critic_values = None
    if cfg.algorithm == "ppo":
        critic_updates = make_minibatch_updates(
            critic_graphdef,
            critic_loss_fn(cfg),
            critic_tx,
            loss_weights={"value": 1.0},
            micro_batch_tokens=micro_tokens,
        )
        critic_values = jax.jit(
            lambda params, extra, inputs, positions: merge_model(critic_graphdef, params, extra)(inputs, positions)
        )

    @jax.jit
    def ppo_advantages(scores, values, mask):
        rewards = terminal_rewards(scores, mask)
        adv, returns = gae_advantages(rewards, values, mask, gamma=cfg.gamma, lam=cfg.lam)
        if cfg.whiten_advantages:
            adv = whiten(adv, mask)
        return adv, returns, explained_variance(values, returns, mask)

    def step(state: RLState, records: Sequence[dict]) -> tuple[RLState, dict[str, float]]:
        t0 = time.perf_counter()
        iteration = int(jax.device_get(state.step))
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), iteration)
        rollout = collect_rollout(
            policy_graphdef,
            (state.policy.params, state.policy.extra),
            records,
            tokenizer,
            sampling,
            key,
            prompt_width=cfg.prompt_width,
            reward_fns=cfg.reward_fns,
            reward_weights=cfg.reward_weights,
        )
        if on_rollout is not None:
            on_rollout(iteration, rollout)
        batch = {k: jnp.asarray(v) for k, v in rollout.batch.items()}
        mask = batch["loss_mask"]
        scores = jnp.asarray(rollout.scores)
        metrics: dict[str, float] = {}
        critic = state.critic
        if cfg.algorithm == "ppo":
            values = critic_values(critic.params, critic.extra, batch["inputs"], batch["positions"])
            adv, returns, ev = ppo_advantages(scores, values, mask)
            batch.update(advantages=adv, returns=returns, old_values=values * mask)
            metrics["val/explained_variance"] = float(ev)
            metrics["val/mean"] = float(jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0))
        else:
            group = group_advantages(scores, sampling.num_samples, scale=cfg.group_scale, eps=cfg.group_eps)
            batch["advantages"] = group
        t1 = time.perf_counter()
        shuffle = np.random.default_rng([iteration, 17])
        rows = mask.shape[0]
        nonfinite = 0.0
        if cfg.algorithm == "ppo":
            order = np.stack(_minibatches(rows, cfg.critic_minibatches, cfg.critic_epochs, shuffle))
            critic, steps = critic_updates(critic, batch, order)
            steps = jax.device_get(steps)
            nonfinite = max(nonfinite, float(np.max(steps["nonfinite"])))
            metrics["value_loss"] = float(steps["value"][-1])
            metrics["val/clipfrac_avg"] = float(steps["val/clipfrac_avg"][-1])
        order = np.stack(_minibatches(rows, cfg.policy_minibatches, cfg.policy_epochs, shuffle))
        policy, steps = policy_updates(state.policy, batch, order)
        steps = jax.device_get(steps)
        nonfinite = max(nonfinite, float(np.max(steps["nonfinite"])))
        m = {k: v[-1] for k, v in steps.items()}  # the last step's metrics, as logged before
        for name, value in m.items():
            if name.startswith(("policy/", "clip_ratio/", "entropy", "loss/")) or name in ("grad_norm", "lr"):
                metrics[name] = float(value)
        per_fn = {f"reward/{k}": float(np.mean(v)) for k, v in rollout.scored.per_function.items()}
        metrics.update(
            loss=float(m["loss"]),
            nonfinite=nonfinite,
            **per_fn,
            **{
                "reward/mean": float(np.mean(rollout.scores)),
                "reward/std": float(np.std(rollout.scores)),
                "response_length/mean": float(np.mean(rollout.lengths)),
                "truncated_fraction": float(np.mean([r == "length" for r in rollout.finish_reasons])),
                "reward_failures": float(rollout.scored.num_failures),
                "time/rollout": t1 - t0,
                "time/update": time.perf_counter() - t1,
            },
        )
        new_state = state.replace(step=state.step + 1, policy=policy, critic=critic)
        return new_state, metrics

    return step

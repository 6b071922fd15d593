"""One training stage of a recipe: ``run_training`` with the recipe config's checkpoint and logging settings.

The post-training recipes (orz_rl, dpo, dialogue_reason, bcpg_nsa) each run a stage in ``<workdir>/<stage>`` that
starts from a warm-start policy; ``run_stage`` scores that policy as step 0 of the curves (only when the stage has no
checkpoint yet, so a resumed run does not log step 0 twice) and then trains.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax


def has_checkpoint(stage_dir: str) -> bool:
    ckpt_dir = os.path.join(stage_dir, "checkpoints")
    return os.path.isdir(ckpt_dir) and bool(os.listdir(ckpt_dir))


def run_stage(
    config,
    state,
    step_fn: Callable,
    batches: Iterable,
    stage_dir: str,
    *,
    total_steps: int,
    eval_fn: Callable | None,
    eval_every: int | None = None,
    first_eval: Callable[[], Mapping[str, float]] | None = None,
    put_batch: Callable | None = None,
) -> Any:
    """Trains ``state`` for ``total_steps`` in ``stage_dir``; returns the final state.

    Args:
      config: the recipe config (reads ``train.log_every``, ``train.nonfinite``, ``eval.every`` and ``checkpoint.*``).
      first_eval: scores of the starting policy, written as step 0 of ``metrics.jsonl`` on a fresh stage.
      eval_every: defaults to ``config.eval.every``.
    Raises ``stepjax.train.Preempted`` on SIGTERM (after saving) and ``NonFiniteLossError`` on a non-finite loss.
    """
    from stepjax.train import run_training
    from stepjax.train.metrics import MetricWriter

    if first_eval is not None and jax.process_index() == 0 and not has_checkpoint(stage_dir):
        writer = MetricWriter(stage_dir, tensorboard=False, resume_step=0)
        writer.write(0, {f"eval/{k}": v for k, v in first_eval().items()})
        writer.close()
    return run_training(
        state,
        step_fn,
        batches,
        stage_dir,
        total_steps=total_steps,
        log_every=config.train.log_every,
        checkpoint_every=config.checkpoint.every,
        keep_checkpoints=config.checkpoint.keep,
        eval_every=config.eval.every if eval_every is None else eval_every,
        eval_fn=eval_fn,
        put_batch=put_batch,
        nonfinite=config.train.nonfinite,
        on_corrupt=config.checkpoint.on_corrupt,
        async_checkpoints=config.checkpoint.async_save,
        config_snapshot=config.to_dict(),
        resume="auto" if config.checkpoint.resume else "never",
    )


def stage_outcome(train: Callable[[], Any]) -> tuple[int, Any]:
    """Runs ``train()`` (e.g. a ``run_stage`` call) and maps how it stopped to the recipe's exit status:
    ``(0, result)`` when it finished; ``(0, None)`` on SIGTERM (checkpoint saved; its message printed);
    ``(3, None)`` on a non-finite loss (the error printed). Callers return the status when the result is None."""
    from stepjax.train import NonFiniteLossError, Preempted

    try:
        return 0, train()
    except Preempted as stop:
        print(str(stop))
        return 0, None
    except NonFiniteLossError as err:
        print(f"error: {err}")
        return 3, None


def warmup_adamw(section):
    """AdamW (betas 0.9/0.95, no weight decay) with linear warm-up to a constant rate, as the offline stages use.

    ``section`` holds ``learning_rate``, ``warmup_steps``, ``grad_clip_norm`` and ``steps``. Returns
    ``(optax transformation, schedule)``.
    """
    from stepjax.train import make_optimizer

    return make_optimizer(
        dict(
            name="adamw",
            learning_rate=section.learning_rate,
            schedule="warmup_constant",
            warmup_steps=section.warmup_steps,
            b1=0.9,
            b2=0.95,
            weight_decay=0.0,
            grad_clip_norm=section.grad_clip_norm,
        ),
        section.steps,
    )


def params_fingerprint(params) -> str:
    """A short hash of the weights (per-leaf sum and sum of squares), stored with the reference cache: a cache made
    with other weights (e.g. after changing the warm start) is discarded and recomputed. Per-leaf statistics: a
    permutation of values within one leaf is not detected (training never produces one)."""
    import hashlib

    import jax
    import jax.numpy as jnp
    import numpy as np

    leaves = jax.tree.leaves(params)
    f32 = [x.astype(jnp.float32) for x in leaves]
    stats = jax.device_get([(jnp.sum(x), jnp.sum(jnp.square(x))) for x in f32])
    return hashlib.sha256(np.asarray(stats, np.float64).tobytes()).hexdigest()[:16]

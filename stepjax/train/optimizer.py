"""Optimizers and learning-rate schedules from config."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import optax

SCHEDULES = ("constant", "warmup_constant", "warmup_cosine", "warmup_linear")
OPTIMIZERS = ("adamw", "adam", "sgd", "lion", "adafactor")


def make_schedule(cfg: Mapping[str, Any], total_steps: int) -> optax.Schedule:
    """``cfg``: ``learning_rate``, ``schedule``, ``warmup_steps``, ``end_lr_ratio`` (cosine/linear floor)."""
    lr = float(cfg["learning_rate"])
    kind = cfg.get("schedule", "constant")
    warmup = int(cfg.get("warmup_steps", 0))
    end = lr * float(cfg.get("end_lr_ratio", 0.0))
    if kind == "constant":
        return optax.constant_schedule(lr)
    if kind == "warmup_constant":
        return optax.join_schedules(
            [optax.linear_schedule(0.0, lr, max(warmup, 1)), optax.constant_schedule(lr)], [warmup]
        )
    decay_steps = max(total_steps - warmup, 1)
    if kind == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, warmup + decay_steps, end)
    if kind == "warmup_linear":
        return optax.join_schedules(
            [optax.linear_schedule(0.0, lr, max(warmup, 1)), optax.linear_schedule(lr, end, decay_steps)], [warmup]
        )
    raise ValueError(f"optimizer.schedule {kind!r} is not one of {SCHEDULES}")


def _decay_mask(params: Any) -> Any:
    # Decay matrices only: norms' scales and biases are left alone (standard practice).
    return jax.tree.map(lambda p: getattr(p, "ndim", 0) >= 2, params)


def make_optimizer(cfg: Mapping[str, Any], total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Builds ``(tx, schedule)`` from an ``optimizer`` config block.

    Keys: ``name`` (adamw|adam|sgd|lion|adafactor), ``learning_rate``, ``schedule``, ``warmup_steps``,
    ``end_lr_ratio``, ``weight_decay``, ``b1``, ``b2``, ``eps``, ``momentum`` (sgd), ``grad_clip_norm`` (0 = off).
    """
    schedule = make_schedule(cfg, total_steps)
    name = cfg.get("name", "adamw")
    b1, b2, eps = float(cfg.get("b1", 0.9)), float(cfg.get("b2", 0.999)), float(cfg.get("eps", 1e-8))
    wd = float(cfg.get("weight_decay", 0.0))
    if name == "adamw":
        core = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=wd, mask=_decay_mask)
    elif name == "adam":
        core = optax.adam(schedule, b1=b1, b2=b2, eps=eps)
    elif name == "sgd":
        core = optax.sgd(schedule, momentum=float(cfg.get("momentum", 0.0)) or None)
    elif name == "lion":
        core = optax.lion(schedule, b1=b1, b2=b2, weight_decay=wd, mask=_decay_mask)
    elif name == "adafactor":
        core = optax.adafactor(schedule, weight_decay_rate=wd or None)
    else:
        raise ValueError(f"optimizer.name {name!r} is not one of {OPTIMIZERS}")
    clip = float(cfg.get("grad_clip_norm", 0.0))
    tx = optax.chain(optax.clip_by_global_norm(clip), core) if clip > 0 else core
    return tx, schedule

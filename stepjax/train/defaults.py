"""Shared config sections every training recipe has: train loop, optimizer, mesh, sharding rules, checkpoints.

Recipes build their schema from these plus their own ``model``/``data``/``eval`` sections; configs change values only.
"""

from __future__ import annotations

import ml_collections

from stepjax.sharding.rules import DEFAULT_RULES

# Sections of an LM recipe whose keys are the user's to choose (``check_against_schema``'s ``open_sections``): the
# RoPE scaling dict, the mesh's axis sizes and the sharding rules table.
LM_OPEN_SECTIONS = ("config.model.rope_scaling", "config.mesh.shape", "config.sharding.rules")


def train_section() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            total_steps=1000,
            batch_size=32,  # global batch (rows); split over the data axes and into micro-batches
            num_micro_batches=1,  # exact gradient accumulation
            log_every=10,
            eval_every=0,  # 0 = only at the end
            nonfinite="error",  # 'error': stop naming the step; 'skip': withhold the update and go on
        )
    )


def optimizer_section() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            name="adamw",
            learning_rate=1e-3,
            schedule="warmup_cosine",
            warmup_steps=100,
            end_lr_ratio=0.1,
            weight_decay=0.0,
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            momentum=0.0,
            grad_clip_norm=1.0,
        )
    )


def checkpoint_section() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            every=500,
            keep=3,
            async_save=True,
            resume=True,  # resume from the latest checkpoint in the workdir
            on_corrupt="error",  # 'error' or 'previous' (fall back to the newest valid checkpoint)
        )
    )


def mesh_section() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(shape=dict(data=-1, fsdp=1, sequence=1, tensor=1, expert=1)))


def sharding_section() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(rules=[[name, axes] for name, axes in DEFAULT_RULES]))


def distributed_section() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(coordinator_address="", num_processes=0, process_id=-1))

"""Recipes that start with an lm_sft warm start build its config from theirs; doing so must not change theirs. (It
once did: the warm start's ``checkpoint.every = warm_start.steps`` was written into the caller's shared section, so
the RL stage then checkpointed every 1000 steps instead of every 50, and a preempted run lost its RL progress.)"""

import pytest
from recipe_cli import load_config

from recipes import bcpg_nsa, dialogue_reason, dpo, orz_rl


@pytest.mark.parametrize(
    "module, config_file, variant, build",
    [
        (orz_rl, "orz_ppo", "tiny", lambda m, c: m._warm_start_config(c)),
        (orz_rl, "grpo", "tiny", lambda m, c: m._warm_start_config(c)),
        (dpo, "dpo", "tiny", lambda m, c: m._warm_start_config(c)),
        (bcpg_nsa, "bcpg_nsa", "tiny", lambda m, c: m._warm_start_config(c, ("a.jsonl", "b.jsonl"))),
        (dialogue_reason, "dialogue_reason", "tiny", lambda m, c: m._warm_start_config(c)),
    ],
)
def test_building_the_warm_start_config_leaves_the_recipe_config_unchanged(module, config_file, variant, build):
    config = load_config(config_file, variant)
    before = config.to_dict()
    module.validate(config)
    sft = build(module, config)
    assert sft.checkpoint.every == config.warm_start.steps != config.checkpoint.every
    assert config.to_dict() == before


def test_stage_config_copies_the_shared_sections_and_maps_the_warm_start():
    from recipes import lm_sft

    config = load_config("orz_ppo", "tiny")
    sft = lm_sft.stage_config(config, sections=("data",))
    for key in (*lm_sft.STAGE_SECTIONS, "data"):
        assert sft[key] is not config[key]  # copies, so the stage may change them
    assert sft.model.to_dict() == config.model.to_dict() and sft.data.to_dict() == config.data.to_dict()
    w = config.warm_start
    assert (sft.seed, sft.train.total_steps, sft.train.batch_size) == (config.seed, w.steps, w.batch_size)
    assert (sft.optimizer.learning_rate, sft.optimizer.warmup_steps) == (w.learning_rate, w.warmup_steps)
    assert sft.train.log_every == config.train.log_every and sft.checkpoint.every == w.steps
    sft.checkpoint.keep = 99
    assert config.checkpoint.keep != 99
    lm_sft.validate(sft)

"""Reinforcement learning pieces: advantage estimators, rewards, value models (registered by name)."""

from stepjax.rl.advantages import (
    gae_advantages,
    gae_env,
    group_advantages,
    terminal_rewards,
    whiten,
)
from stepjax.rl.registry import ADVANTAGES, REWARDS, Registry
from stepjax.rl.rewards import ScoredBatch, answer_format_reward, orz_math_reward, score_batch

__all__ = [
    "ADVANTAGES",
    "REWARDS",
    "Registry",
    "ScoredBatch",
    "answer_format_reward",
    "gae_advantages",
    "gae_env",
    "group_advantages",
    "orz_math_reward",
    "score_batch",
    "terminal_rewards",
    "whiten",
]

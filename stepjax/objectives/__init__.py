"""Objectives: pure functions of arrays that return ``{name: Term(sum, denominator)}``."""

from stepjax.objectives.bcpg import bcpg_loss, group_mean_baselines
from stepjax.objectives.dpo import DPO_LOSS_TYPES, F_DIVERGENCES, dpo_loss, dpo_loss_weights
from stepjax.objectives.grpo import TRL_LOSS_TYPES, grpo_loss, resolve_aggregation
from stepjax.objectives.kl import KL_ESTIMATORS, kl_penalty, kl_shaped_rewards
from stepjax.objectives.lm import lm_loss, token_log_probs
from stepjax.objectives.ppo import explained_variance, ppo_policy_loss, value_loss
from stepjax.objectives.prm import prm_loss
from stepjax.objectives.registry import get_loss, register_loss, registered_losses
from stepjax.objectives.sft import sft_loss
from stepjax.objectives.terms import AGGREGATIONS, LossTerms, Term, aggregate, sequence_totals

__all__ = [
    "AGGREGATIONS",
    "DPO_LOSS_TYPES",
    "F_DIVERGENCES",
    "KL_ESTIMATORS",
    "TRL_LOSS_TYPES",
    "LossTerms",
    "Term",
    "aggregate",
    "bcpg_loss",
    "dpo_loss",
    "dpo_loss_weights",
    "explained_variance",
    "get_loss",
    "group_mean_baselines",
    "grpo_loss",
    "kl_penalty",
    "kl_shaped_rewards",
    "lm_loss",
    "ppo_policy_loss",
    "prm_loss",
    "register_loss",
    "registered_losses",
    "resolve_aggregation",
    "sequence_totals",
    "sft_loss",
    "token_log_probs",
    "value_loss",
]

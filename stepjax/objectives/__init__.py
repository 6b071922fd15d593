"""Objectives: pure functions of arrays that return ``{name: Term(sum, denominator)}``."""

from stepjax.objectives.lm import lm_loss, token_log_probs
from stepjax.objectives.registry import get_loss, register_loss, registered_losses
from stepjax.objectives.terms import AGGREGATIONS, LossTerms, Term, aggregate

__all__ = [
    "AGGREGATIONS",
    "LossTerms",
    "Term",
    "aggregate",
    "get_loss",
    "lm_loss",
    "register_loss",
    "registered_losses",
    "token_log_probs",
]

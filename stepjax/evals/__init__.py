"""Evaluators: held-out answer accuracy (more land with the RL and PRM recipes)."""

from stepjax.evals.answer_accuracy import answer_accuracy

__all__ = ["answer_accuracy"]

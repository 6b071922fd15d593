"""Training: train state, optimizer, the pure step, the loop around it, checkpoints, metrics, progress, plots."""

from stepjax.train.checkpoint import (
    CheckpointManager,
    CheckpointMismatchError,
    CorruptCheckpointError,
    Restored,
    abstract_state,
)
from stepjax.train.errors import CheckpointError, NonFiniteLossError, Preempted
from stepjax.train.loop import LoopConfig, run_training
from stepjax.train.metrics import MetricWriter, read_metrics
from stepjax.train.optimizer import make_optimizer, make_schedule
from stepjax.train.plots import plot_metrics
from stepjax.train.progress import Progress
from stepjax.train.state import TrainState, create_train_state, merge_model, split_model, state_shardings
from stepjax.train.step import (
    jit_train_step,
    lm_loss_fn,
    make_train_step,
    split_micro_batches,
    train_metrics_to_host,
)

__all__ = [
    "CheckpointError",
    "CheckpointManager",
    "CheckpointMismatchError",
    "CorruptCheckpointError",
    "LoopConfig",
    "MetricWriter",
    "NonFiniteLossError",
    "Preempted",
    "Progress",
    "Restored",
    "TrainState",
    "abstract_state",
    "create_train_state",
    "jit_train_step",
    "lm_loss_fn",
    "make_optimizer",
    "make_schedule",
    "make_train_step",
    "merge_model",
    "plot_metrics",
    "read_metrics",
    "run_training",
    "split_micro_batches",
    "split_model",
    "state_shardings",
    "train_metrics_to_host",
]

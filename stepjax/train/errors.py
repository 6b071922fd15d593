"""Errors the training loop raises, each naming what went wrong and where."""

from __future__ import annotations


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, corrupt or does not match the model being trained.

    Raised before any training step runs; no checkpoint is ever deleted because of it.
    """


class NonFiniteLossError(FloatingPointError):
    """The loss or the gradients of a step were NaN/inf (policy ``nonfinite='error'``).

    The step itself withheld the update, so parameters and earlier checkpoints stay finite; no checkpoint of
    ``step`` is written.
    """

    def __init__(self, step: int, metrics: dict[str, float] | None = None):
        self.step = int(step)
        self.metrics = dict(metrics or {})
        shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(self.metrics.items()) if isinstance(v, float))
        super().__init__(
            f"non-finite loss or gradients at step {self.step}"
            + (f" ({shown})" if shown else "")
            + "; the update was withheld and no checkpoint of this step was written. Lower the learning rate, "
            "check the data of this step, or set nonfinite='skip' to continue past such steps."
        )


class Preempted(SystemExit):
    """Training stopped on SIGTERM/SIGINT (or a multi-host preemption notice) after saving a checkpoint.

    A ``SystemExit`` with code 0: left uncaught, the program exits cleanly with status 0 (what schedulers expect
    of a preempted job); catch it to run clean-up first. ``step`` is the step the saved checkpoint holds.
    """

    def __init__(self, step: int, checkpoint_dir: str, signal_name: str):
        super().__init__(0)
        self.step = int(step)
        self.checkpoint_dir = str(checkpoint_dir)
        self.signal_name = signal_name
        self.message = (
            f"preempted by {signal_name} at step {self.step}; checkpoint saved in "
            f"{self.checkpoint_dir}/{self.step}; rerun the same command to resume"
        )

    def __str__(self) -> str:
        return self.message

"""The training loop around a jitted step: resume, log, evaluate, checkpoint, stop cleanly on signals.

Host-device traffic: the loop dispatches step ``k + 1`` before reading step ``k``'s ``nonfinite`` flag (one scalar,
one step late), so the device never idles waiting for the host; full metrics are fetched only on log/eval/save
steps. Before any checkpoint is written the flag of the step being saved is read, so a non-finite step is never
checkpointed (the step function has already withheld its update).

Preemption: the first SIGTERM or SIGINT (multi-host: jax's preemption notice, agreed across processes) lets the
current step finish, saves a checkpoint of the step reached, waits until it is on disk and raises ``Preempted`` --
a ``SystemExit`` with code 0, so an uncaught one ends the program with status 0. A second SIGINT interrupts at once.

Resume: the latest checkpoint in ``workdir/checkpoints`` is restored (state in its shardings, data-iterator state)
before anything is compiled; the run then continues exactly where the checkpoint left off.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jax
import numpy as np

from stepjax.train.checkpoint import ON_CORRUPT, CheckpointManager, abstract_state
from stepjax.train.errors import CheckpointError, NonFiniteLossError, Preempted
from stepjax.train.metrics import MetricWriter
from stepjax.train.progress import Progress

log = logging.getLogger(__name__)

NONFINITE = ("error", "skip")
RESUME = ("auto", "required", "never")
CHECKPOINT_DIR = "checkpoints"

StepFn = Callable[[Any, Any], tuple[Any, Mapping[str, Any]]]
EvalFn = Callable[[Any, int], Mapping[str, Any]]
Hook = Callable[[int, Any], None]


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """The loop's scalar options (field names equal ``run_training``'s keywords: ``**dataclasses.asdict(cfg)``)."""

    total_steps: int
    log_every: int = 50
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    eval_every: int = 0
    nonfinite: str = "error"
    on_corrupt: str = "error"
    async_checkpoints: bool = True
    tokens_per_batch: int | None = None
    resume: str = "auto"

    def __post_init__(self):
        def need(ok: bool, key: str, what: str) -> None:
            if not ok:
                raise ValueError(f"loop option {key}={getattr(self, key)!r}: expected {what}")

        need(isinstance(self.total_steps, int) and self.total_steps >= 0, "total_steps", "an int >= 0")
        need(isinstance(self.log_every, int) and self.log_every >= 1, "log_every", "an int >= 1")
        need(
            isinstance(self.checkpoint_every, int) and self.checkpoint_every >= 0,
            "checkpoint_every",
            "an int >= 0 (0: only at the end and on preemption)",
        )
        need(isinstance(self.keep_checkpoints, int) and self.keep_checkpoints >= 1, "keep_checkpoints", "an int >= 1")
        need(isinstance(self.eval_every, int) and self.eval_every >= 0, "eval_every", "an int >= 0 (0: no eval)")
        need(self.nonfinite in NONFINITE, "nonfinite", f"one of {NONFINITE}")
        need(self.on_corrupt in ON_CORRUPT, "on_corrupt", f"one of {ON_CORRUPT}")
        need(self.tokens_per_batch is None or self.tokens_per_batch > 0, "tokens_per_batch", "None or > 0")
        need(self.resume in RESUME, "resume", f"one of {RESUME}")

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> LoopConfig:
        """From a config block (dict / ConfigDict); unknown keys raise, naming them and the known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f"unknown loop options {unknown}; known: {sorted(known)}")
        return cls(**dict(cfg))


class _StopRequest:
    """Signal handler: the first SIGTERM/SIGINT asks the loop to stop after the current step."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def __call__(self, signum: int, frame: Any) -> None:
        if self.reason is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self.reason = signal.Signals(signum).name

    @contextmanager
    def installed(self) -> Iterator[_StopRequest]:
        if jax.process_count() > 1:
            # jax's coordination service owns SIGTERM (preemption notices, agreed across hosts; polled by the loop).
            # A local signal must not stop one process alone: the checkpoint save is collective.
            yield self
            return
        if threading.current_thread() is not threading.main_thread():
            log.warning("run_training is not on the main thread: SIGTERM/SIGINT will not stop it cleanly")
            yield self
            return
        previous = {s: signal.signal(s, self) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def _preemption_poll() -> Callable[[int], bool]:
    if jax.process_count() == 1:
        return lambda step: False
    from jax.experimental import multihost_utils

    def poll(step: int) -> bool:
        try:
            return bool(multihost_utils.reached_preemption_sync_point(step))
        except RuntimeError:  # preemption service not enabled
            return False

    return poll


def _host_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(np.asarray(v)) for k, v in jax.device_get(dict(metrics)).items()}


def _is_nonfinite(metrics: Mapping[str, Any]) -> bool:
    if "nonfinite" in metrics:
        return float(np.asarray(metrics["nonfinite"])) > 0
    return not np.isfinite(float(np.asarray(metrics["loss"])))


def run_training(
    state: Any,
    step_fn: StepFn,
    train_iter: Any,
    workdir: str | os.PathLike,
    *,
    total_steps: int,
    log_every: int = 50,
    checkpoint_every: int = 1000,
    keep_checkpoints: int = 3,
    eval_every: int = 0,
    eval_fn: EvalFn | None = None,
    put_batch: Callable[[Any], Any] | None = None,
    nonfinite: str = "error",
    on_corrupt: str = "error",
    async_checkpoints: bool = True,
    tokens_per_batch: int | None = None,
    config_snapshot: Mapping[str, Any] | None = None,
    resume: str = "auto",
    hooks: Sequence[Hook] = (),
    progress_bar: bool | None = None,
) -> Any:
    """Trains from the latest checkpoint in ``workdir/checkpoints`` (or from ``state``) up to ``total_steps``.

    Args:
      state: the freshly initialised ``TrainState`` (its shapes and shardings are the restore target).
      step_fn: ``(state, batch) -> (state, metrics)``, usually ``jit_train_step(...)``; metrics are scalars and
        should include ``loss`` and ``nonfinite`` (1.0 when the step withheld a non-finite update).
      train_iter: ``next(it) -> batch`` (numpy dict), ``get_state() -> JSON dict``, ``set_state(dict)``.
      workdir: run folder: ``checkpoints/``, ``metrics.jsonl``, ``tensorboard/``.
      total_steps: the step count to reach (state.step counts completed steps).
      log_every: fetch, write and print metrics every this many steps (and at the last step).
      checkpoint_every: save every this many steps (0: only at the end / on preemption); always at the end.
      keep_checkpoints: newest checkpoints kept.
      eval_every / eval_fn: ``eval_fn(state, step) -> {name: scalar}`` every ``eval_every`` steps and at the end,
        logged as ``eval/<name>``.
      put_batch: host batch -> device batch (e.g. ``stepjax.sharding.shard_batch``); default: pass it unchanged.
      nonfinite: ``'error'`` raises ``NonFiniteLossError`` at the first non-finite step; ``'skip'`` warns and goes on
        (that step's update was withheld by the step function).
      on_corrupt: unreadable latest checkpoint: ``'error'`` raises ``CheckpointError`` before any step runs,
        ``'previous'`` resumes from the newest readable one (see ``CheckpointManager.restore_latest``).
      async_checkpoints: write checkpoints in the background.
      tokens_per_batch: tokens in one global batch, for tokens/s.
      config_snapshot: JSON-able config stored in every checkpoint's metadata.
      resume: ``'auto'`` (latest checkpoint if any), ``'required'`` (error if none), ``'never'`` (error if the
        workdir already holds checkpoints, rather than mixing two runs).
      hooks: ``hook(step, state)`` after every step (after logging and checkpointing); keep no reference to
        ``state`` (the next step donates its buffers).
      progress_bar: force the tqdm bar on/off (default: on when stderr is a terminal, else one line per log).
    Returns:
      The final state.
    Raises:
      Preempted: on SIGTERM/SIGINT after a checkpoint of the step reached is on disk (exit status 0 if uncaught).
      NonFiniteLossError: policy ``'error'`` and a non-finite step.
      CheckpointError: corrupt/mismatched checkpoint, or ``resume`` not satisfiable (all before any step runs).
    """
    cfg = LoopConfig(
        total_steps=total_steps,
        log_every=log_every,
        checkpoint_every=checkpoint_every,
        keep_checkpoints=keep_checkpoints,
        eval_every=eval_every,
        nonfinite=nonfinite,
        on_corrupt=on_corrupt,
        async_checkpoints=async_checkpoints,
        tokens_per_batch=tokens_per_batch,
        resume=resume,
    )
    if cfg.eval_every and eval_fn is None:
        raise ValueError(f"loop option eval_every={cfg.eval_every} needs an eval_fn")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    # resume='required': a missing checkpoint directory is an error (named), not something to create.
    ckpt = CheckpointManager(
        workdir / CHECKPOINT_DIR,
        max_to_keep=cfg.keep_checkpoints,
        save_every=cfg.checkpoint_every,
        async_save=cfg.async_checkpoints,
        on_corrupt=cfg.on_corrupt,
        create=cfg.resume != "required",
    )
    writer = progress = None
    try:
        with _StopRequest().installed() as stop:
            state, start = _resume(ckpt, state, train_iter, cfg)
            writer = MetricWriter(workdir, resume_step=start)
            progress = Progress(cfg.total_steps, initial=start, tokens_per_step=cfg.tokens_per_batch, bar=progress_bar)
            if start:
                progress.message(f"resumed from step {start} ({ckpt.step_dir(start)})")
            loop = _Loop(
                cfg, ckpt, writer, progress, stop, train_iter, step_fn, eval_fn, put_batch, hooks, config_snapshot
            )
            return loop.run(state, start)
    finally:
        _close_quietly(ckpt.close, "waiting for checkpoint saves")
        if writer is not None:
            writer.close()
        if progress is not None:
            progress.close()


def _resume(ckpt: CheckpointManager, state: Any, train_iter: Any, cfg: LoopConfig) -> tuple[Any, int]:
    if cfg.resume == "never":
        existing = ckpt.all_steps()
        if existing:
            raise CheckpointError(
                f"resume='never' but {ckpt.directory} already holds checkpoints {existing}; use a "
                "fresh workdir or resume='auto'"
            )
        return state, int(jax.device_get(state.step))
    restored = ckpt.restore_latest(abstract_state(state), required=cfg.resume == "required")
    if restored is None:
        return state, int(jax.device_get(state.step))
    if restored.data_state is not None:
        train_iter.set_state(restored.data_state)
    elif hasattr(train_iter, "set_state"):
        log.warning("checkpoint %s holds no data-iterator state: the data order restarts", ckpt.step_dir(restored.step))
    step = int(jax.device_get(restored.state.step))
    if step != restored.step:
        raise CheckpointError(f"checkpoint {ckpt.step_dir(restored.step)} holds a state of step {step}")
    return restored.state, step


def _close_quietly(fn: Callable[[], None], what: str) -> None:
    # In a `finally` after an error: report a failing clean-up without hiding the original exception.
    try:
        fn()
    except Exception:
        log.exception("error while %s", what)


class _Loop:
    def __init__(self, cfg, ckpt, writer, progress, stop, train_iter, step_fn, eval_fn, put_batch, hooks, snapshot):
        self.cfg, self.ckpt, self.writer, self.progress, self.stop = cfg, ckpt, writer, progress, stop
        self.train_iter, self.step_fn, self.eval_fn = train_iter, step_fn, eval_fn
        self.put_batch = put_batch or (lambda b: b)
        self.hooks = tuple(hooks)
        if snapshot is not None and hasattr(snapshot, "to_dict"):  # ml_collections.ConfigDict
            snapshot = snapshot.to_dict()
        self.meta = {"config": dict(snapshot)} if snapshot is not None else {}
        self.preempted = _preemption_poll()
        self.skipped = 0

    def check_finite(self, step: int, metrics: Mapping[str, Any]) -> None:
        if not _is_nonfinite(metrics):
            return
        host = _host_metrics(metrics)
        if self.cfg.nonfinite == "error":
            self.writer.write(step, host)
            raise NonFiniteLossError(step, host)
        self.skipped += 1
        log.warning(
            "non-finite loss or gradients at step %d: update withheld, continuing (nonfinite='skip'; "
            "%d such steps so far)",
            step,
            self.skipped,
        )
        self.progress.message(f"warning: non-finite loss at step {step}; update skipped")

    def save(self, step: int, state: Any, *, wait: bool) -> None:
        data_state = self.train_iter.get_state() if hasattr(self.train_iter, "get_state") else None
        self.ckpt.save(step, state, data_state=data_state, metadata=self.meta, force=True, wait=wait)

    def run(self, state: Any, start: int) -> Any:
        cfg, step = self.cfg, start
        if start >= cfg.total_steps:
            if start > cfg.total_steps:
                log.warning("checkpoint step %d is past total_steps=%d; nothing to do", start, cfg.total_steps)
            return state
        pending: tuple[int, Mapping[str, Any]] | None = None  # last step whose nonfinite flag is unread
        while step < cfg.total_steps:
            try:
                batch = next(self.train_iter)
            except StopIteration:
                if pending is not None:
                    self.check_finite(*pending)
                self.save(step, state, wait=True)
                raise RuntimeError(
                    f"train_iter ran out after step {step} of total_steps={cfg.total_steps}; a "
                    f"checkpoint of step {step} was saved"
                ) from None
            state, metrics = self.step_fn(state, self.put_batch(batch))
            step += 1
            if step == start + 1:  # the first step compiles: start the rate clock once it is done
                jax.block_until_ready(metrics)
                self.progress.start_clock(step)
            if pending is not None:
                self.check_finite(*pending)
            pending = (step, metrics)
            self.progress.advance(step)

            last = step == cfg.total_steps
            notice = self.preempted(step)  # multi-host: every process polls every step (a collective protocol)
            stopping = notice or self.stop.reason is not None
            do_log = step % cfg.log_every == 0 or last
            do_eval = self.eval_fn is not None and cfg.eval_every > 0 and (step % cfg.eval_every == 0 or last)
            do_save = self.ckpt.should_save(step) or last or stopping
            if do_log or do_eval or do_save:
                self.check_finite(*pending)
                pending = None
            record: dict[str, Any] = {}
            if do_log:
                record.update(_host_metrics(metrics))
                record.update(self.progress.rates(step))
                if self.skipped:
                    record["nonfinite_steps"] = float(self.skipped)
            if do_eval:
                for k, v in self.eval_fn(state, step).items():
                    record[k if k.startswith("eval/") else f"eval/{k}"] = v
            if record:
                self.progress.log(step, self.writer.write(step, record))
            if do_save:
                self.save(step, state, wait=stopping)
            for hook in self.hooks:
                hook(step, state)
            if stopping or self.stop.reason is not None:
                if not do_save:  # the signal arrived during this step's hooks
                    if pending is not None:
                        self.check_finite(*pending)
                    self.save(step, state, wait=True)
                self.ckpt.wait()
                reason = self.stop.reason or "preemption notice"
                self.progress.message(f"{reason}: saved step {step}, exiting")
                raise Preempted(step, str(self.ckpt.directory), reason)
        return state

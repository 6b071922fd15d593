"""Orbax checkpoints of a training run: the ``TrainState`` pytree, the data iterator's state and a metadata JSON.

One step directory holds three items: ``state`` (``StandardSave``: sharded arrays, restored straight into the
target shardings), ``data`` (``JsonSave``: every process's iterator state) and ``meta`` (``JsonSave``: step, time,
config snapshot). Orbax writes each step into a temporary directory and renames it when complete; keep-N deletes
old steps only after the new one is finalised (its finalize thread waits for the commit and skips the deletion if
the commit failed), so an interrupted save never costs the previous checkpoint.

Bad checkpoints are named, never deleted: a latest checkpoint that cannot be read raises ``CorruptCheckpointError``
naming its directory and the earlier steps that look valid; with ``on_corrupt='previous'`` the newest readable one
is restored instead and the unreadable newer ones are moved aside to ``<directory>.corrupt/`` (kept for inspection;
left in place they would block new saves at lower step numbers). A checkpoint whose arrays do not match the model
(shape, dtype, missing keys) raises ``CheckpointMismatchError`` and never triggers the fallback.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from stepjax.train.errors import CheckpointError

log = logging.getLogger(__name__)

STATE, DATA, META = "state", "data", "meta"
ON_CORRUPT = ("error", "previous")
_DATA_FORMAT = 1


class CorruptCheckpointError(CheckpointError):
    """A checkpoint directory exists but cannot be read back (truncated, missing or garbled files)."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


class CheckpointMismatchError(CheckpointError):
    """A readable checkpoint whose arrays do not fit the model being restored (a config change, not corruption)."""


class Restored(NamedTuple):
    """What ``restore`` returns: the step, the state (in the target shardings), this process's data-iterator state
    (``None`` if none was saved) and the metadata JSON."""

    step: int
    state: Any
    data_state: dict[str, Any] | None
    metadata: dict[str, Any]


def abstract_state(tree: Any) -> Any:
    """``jax.ShapeDtypeStruct`` (shape, dtype, sharding) for every array leaf: the restore target of a concrete state.

    Restoring into it places every array directly in its sharding (each host reads only its shards).
    """

    def one(x: Any) -> Any:
        if isinstance(x, jax.ShapeDtypeStruct):
            return x
        return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=getattr(x, "sharding", None))

    return jax.tree.map(one, tree)


def _leaf_name(path: tuple) -> str:
    # Orbax names arrays by their key path joined with dots ("params.layers.0.attn.q_proj.kernel.value").
    parts = []
    for entry in path:
        for attr in ("key", "idx", "name"):
            if hasattr(entry, attr):
                parts.append(str(getattr(entry, attr)))
                break
        else:
            parts.append(str(entry))
    return ".".join(parts)


def _json_safe(obj: Any) -> Any:
    # Config snapshots may hold tuples, numpy scalars or paths; store what JSON can hold, the rest as strings.
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def _allgather_json(obj: Any) -> list[Any]:
    """Every process's ``obj`` (JSON-serialisable), in process order; the primary host writes them all."""
    if jax.process_count() == 1:
        return [obj]
    from jax.experimental import multihost_utils

    raw = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.array([raw.size], np.int32))).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: raw.size] = raw
    rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(sizes), -1)
    return [json.loads(bytes(row[:n]).decode()) for row, n in zip(rows, sizes, strict=True)]


class CheckpointManager:
    """Async, keep-N Orbax checkpoints of a ``TrainState`` plus data-iterator state and metadata.

    Args:
      directory: where step directories (``<directory>/<step>``) live.
      max_to_keep: newest checkpoints kept (``None`` keeps all).
      save_every: ``should_save(step)`` is true every this many steps (0: never; ``save(force=True)`` still saves).
      async_save: write in a background thread (the arrays are copied off the device before ``save`` returns).
      on_corrupt: default policy of ``restore_latest`` for an unreadable latest checkpoint: ``'error'`` or
        ``'previous'``.
      create: create ``directory`` if missing; with ``False`` a missing directory raises ``CheckpointError``.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        max_to_keep: int | None = 3,
        save_every: int = 0,
        async_save: bool = True,
        on_corrupt: str = "error",
        create: bool = True,
    ):
        if on_corrupt not in ON_CORRUPT:
            raise ValueError(f"on_corrupt={on_corrupt!r} is not one of {ON_CORRUPT}")
        if max_to_keep is not None and max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1 or None (keep all), got {max_to_keep}")
        if save_every < 0:
            raise ValueError(f"save_every must be >= 0, got {save_every}")
        self.directory = Path(directory).absolute()
        if not create and not self.directory.is_dir():
            raise CheckpointError(f"checkpoint directory {self.directory} does not exist")
        self.save_every = save_every
        self.on_corrupt = on_corrupt
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            enable_async_checkpointing=async_save,
            create=create,
            # Leftovers of saves that never finished (a killed process); never a finalised checkpoint.
            cleanup_tmp_directories=True,
        )
        handlers = {
            STATE: ocp.StandardCheckpointHandler(),
            DATA: ocp.JsonCheckpointHandler(),
            META: ocp.JsonCheckpointHandler(),
        }
        self._mgr = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    # -- listing ---------------------------------------------------------------------------------------------
    def all_steps(self) -> list[int]:
        """Checkpoint steps, ascending: those on disk when the manager started plus those saved since (a save still
        in flight is listed; leftovers of saves that never finished are not)."""
        return sorted(int(s) for s in self._mgr.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def step_dir(self, step: int) -> Path:
        return self.directory / str(step)

    def should_save(self, step: int) -> bool:
        return self.save_every > 0 and step % self.save_every == 0

    # -- saving ----------------------------------------------------------------------------------------------
    def save(
        self,
        step: int,
        state: Any,
        *,
        data_state: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        force: bool = False,
        wait: bool = False,
    ) -> bool:
        """Saves ``state`` (any pytree of arrays, usually a ``TrainState``) as step ``step``.

        Every process must call it (collective). ``data_state`` is this process's iterator state (JSON); all
        processes' states are gathered into one item. ``metadata`` is merged into the metadata JSON. Returns
        ``False`` (and saves nothing) when not due (``should_save``) and not ``force``d, or when the step exists.
        ``wait=True`` blocks until the checkpoint is finalised on disk.
        """
        if not force and not self.should_save(step):
            return False
        if step in self.all_steps():
            log.info("checkpoint of step %d already exists in %s; not saving it again", step, self.directory)
            return False
        meta = {
            "step": int(step),
            "saved_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "process_count": jax.process_count(),
            **_json_safe(dict(metadata or {})),
        }
        try:  # strict: a state stringified here could not be handed back to set_state()
            data_state = json.loads(json.dumps(data_state))
        except (TypeError, ValueError) as e:
            raise TypeError(
                f"the data-iterator state must be JSON-serialisable (a dict of numbers, strings, lists): "
                f"{e}; got {data_state!r:.200}"
            ) from e
        data = {"format": _DATA_FORMAT, "states": _allgather_json(data_state)}
        args = ocp.args.Composite(
            **{STATE: ocp.args.StandardSave(state), DATA: ocp.args.JsonSave(data), META: ocp.args.JsonSave(meta)}
        )
        # force=True: we decide when to save; orbax's own policy would skip a save while another is in flight.
        self._mgr.save(step, args=args, force=True)
        if wait:
            self.wait()
        return True

    def wait(self) -> None:
        """Blocks until in-flight saves are finalised (raises if a background save failed)."""
        self._mgr.wait_until_finished()

    def close(self) -> None:
        """Waits for in-flight saves, then releases orbax's threads."""
        self._mgr.close()

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- restoring -------------------------------------------------------------------------------------------
    def metadata(self, step: int) -> dict[str, Any]:
        """The metadata JSON of ``step`` (cheap: no arrays are read)."""
        self._require_step(step)
        return dict(self._mgr.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))[META])

    def restore(self, step: int, abstract: Any) -> Restored:
        """Restores step ``step`` into ``abstract`` (``abstract_state(state)`` or any matching pytree of
        ``ShapeDtypeStruct`` with shardings).

        Raises:
          CheckpointError: the step does not exist.
          CheckpointMismatchError: the saved arrays do not match ``abstract`` (names the differing leaves).
          CorruptCheckpointError: the step directory cannot be read back.
        """
        self._require_step(step)
        abstract = abstract_state(abstract)
        self._check_matches(step, abstract)
        items = {STATE: ocp.args.StandardRestore(abstract)}
        for name in (DATA, META):
            if (self.step_dir(step) / name).exists():
                items[name] = ocp.args.JsonRestore()
        try:
            out = self._mgr.restore(step, args=ocp.args.Composite(**items))
            state, data, meta = out[STATE], out.get(DATA), out.get(META)
        except Exception as e:  # tensorstore, json and orbax raise many types; all mean "unreadable"
            raise CorruptCheckpointError(
                f"checkpoint {self.step_dir(step)} cannot be read: {type(e).__name__}: {_short(e)}", step
            ) from e
        return Restored(int(step), state, self._local_data_state(step, data), dict(meta or {}))

    def restore_latest(
        self, abstract: Any, *, on_corrupt: str | None = None, required: bool = False
    ) -> Restored | None:
        """Restores the newest checkpoint into ``abstract``; ``None`` if there is none (unless ``required``).

        An unreadable newest checkpoint raises ``CorruptCheckpointError`` naming its directory and the earlier
        steps that pass a metadata check (``on_corrupt='error'``), or falls back to the newest readable step with a
        warning (``'previous'``; the unreadable newer steps are moved to ``<directory>.corrupt/``, never deleted).
        """
        mode = on_corrupt or self.on_corrupt
        if mode not in ON_CORRUPT:
            raise ValueError(f"on_corrupt={mode!r} is not one of {ON_CORRUPT}")
        steps = self.all_steps()
        if not steps:
            if required:
                raise CheckpointError(f"no checkpoint to restore in {self.directory} (restore was requested)")
            return None
        bad: list[int] = []
        for step in reversed(steps):
            try:
                restored = self.restore(step, abstract)
            except CorruptCheckpointError as e:
                if mode == "error":
                    earlier = [s for s in steps if s < step]
                    valid = [s for s in earlier if self._looks_valid(s)]
                    raise CorruptCheckpointError(
                        f"latest checkpoint {self.step_dir(step)} is corrupt ({e}). Earlier checkpoints in "
                        f"{self.directory} that look valid: {valid or 'none'}"
                        + (f" (unreadable: {sorted(set(earlier) - set(valid))})" if set(earlier) - set(valid) else "")
                        + ". Nothing was deleted. Set on_corrupt='previous' to resume from the newest readable one, "
                        "or move the corrupt directory away.",
                        step,
                    ) from e.__cause__
                log.warning("checkpoint %s is unreadable (%s); trying an earlier one", self.step_dir(step), e)
                bad.append(step)
                continue
            if bad:
                moved = self._quarantine(bad)
                log.warning(
                    "resumed from step %d of %s; unreadable newer checkpoints %s were moved to %s",
                    step,
                    self.directory,
                    bad,
                    moved,
                )
            return restored
        raise CorruptCheckpointError(
            f"no checkpoint in {self.directory} can be read (steps {steps}); nothing was deleted", steps[-1]
        )

    # -- internals -------------------------------------------------------------------------------------------
    def _require_step(self, step: int) -> None:
        self.wait()  # a step still being written is listed but not readable yet
        if not self.directory.is_dir():
            raise CheckpointError(f"checkpoint directory {self.directory} does not exist")
        steps = self.all_steps()
        if step not in steps:
            raise CheckpointError(f"no checkpoint of step {step} in {self.directory}; available steps: {steps}")

    def _saved_arrays(self, step: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        try:
            tree = self._mgr.item_metadata(step)[STATE]
            if tree is None:
                raise FileNotFoundError(f"{self.step_dir(step) / STATE} has no readable array metadata")
            flat = jax.tree_util.tree_flatten_with_path(tree)[0]
            return {_leaf_name(p): (tuple(m.shape), np.dtype(m.dtype)) for p, m in flat}
        except Exception as e:
            raise CorruptCheckpointError(
                f"checkpoint {self.step_dir(step)} has unreadable metadata: {type(e).__name__}: {_short(e)}", step
            ) from e

    def _check_matches(self, step: int, abstract: Any) -> None:
        saved = self._saved_arrays(step)
        wanted = {
            _leaf_name(p): (tuple(x.shape), np.dtype(x.dtype))
            for p, x in jax.tree_util.tree_flatten_with_path(abstract)[0]
        }
        problems = [f"{k}: missing in checkpoint" for k in wanted if k not in saved]
        problems += [f"{k}: in checkpoint but not in the model" for k in saved if k not in wanted]
        problems += [
            f"{k}: checkpoint {saved[k][0]} {saved[k][1]} vs model {v[0]} {v[1]}"
            for k, v in wanted.items()
            if k in saved and saved[k] != v
        ]
        if problems:
            shown = "; ".join(problems[:8]) + (f"; ... ({len(problems)} differences)" if len(problems) > 8 else "")
            raise CheckpointMismatchError(
                f"checkpoint {self.step_dir(step)} does not match the state being restored (did the model or "
                f"optimizer config change?): {shown}"
            )

    def _looks_valid(self, step: int) -> bool:
        try:
            self._saved_arrays(step)
            self.metadata(step)
            return True
        except Exception:
            return False

    def _local_data_state(self, step: int, data: Any) -> dict[str, Any] | None:
        if not data:
            return None
        states = data.get("states") or [None]
        if states == [None]:
            return None
        if len(states) != jax.process_count():
            raise CheckpointMismatchError(
                f"checkpoint {self.step_dir(step)} holds data-iterator states of {len(states)} processes but this "
                f"run has {jax.process_count()}; the data position cannot be mapped"
            )
        return states[jax.process_index()]

    def _quarantine(self, steps: list[int]) -> Path:
        target = self.directory.parent / f"{self.directory.name}.corrupt"
        if jax.process_index() == 0:
            target.mkdir(parents=True, exist_ok=True)
            for step in steps:
                dest = target / str(step)
                if dest.exists():
                    dest = target / f"{step}.{datetime.datetime.now().strftime('%Y%m%d-%H%M%S-%f')}"
                shutil.move(str(self.step_dir(step)), str(dest))
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("stepjax_checkpoint_quarantine")
        self._mgr.reload()
        return target


def _short(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[:limit] + " ..."

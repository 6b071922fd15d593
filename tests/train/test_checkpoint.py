"""CheckpointManager: round trip, sharded restore into another mesh, keep-N safety, bad directories and steps."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import build, leaves

from stepjax.train import (
    CheckpointError,
    CheckpointManager,
    CorruptCheckpointError,
    abstract_state,
)


def _equal(a, b) -> bool:
    return all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(leaves(a), leaves(b), strict=True))


def test_round_trip_state_data_and_metadata(tmp_path):
    _, state, _ = build()
    with CheckpointManager(tmp_path, async_save=True) as mgr:
        assert mgr.save(
            7,
            state,
            data_state={"index": 7, "epoch": [1, 2]},
            metadata={"config": {"shape": (2, 3), "lr": np.float32(0.5), "path": Path("/x")}},
            force=True,
        )
        assert not mgr.save(7, state, force=True)  # an existing step is never overwritten
        assert not mgr.save(8, state)  # save_every=0: only forced saves
    with CheckpointManager(tmp_path, create=False) as mgr:
        assert mgr.all_steps() == [7]
        restored = mgr.restore_latest(abstract_state(state))
    assert restored.step == 7 and _equal(restored.state, state)
    assert jax.tree.structure(restored.state) == jax.tree.structure(state)
    assert restored.data_state == {"index": 7, "epoch": [1, 2]}
    assert restored.metadata["step"] == 7 and restored.metadata["process_count"] == 1
    assert restored.metadata["config"] == {"shape": [2, 3], "lr": 0.5, "path": "/x"}


def test_data_state_must_be_json(tmp_path):
    _, state, _ = build()
    with CheckpointManager(tmp_path) as mgr:
        with pytest.raises(TypeError, match="data-iterator state must be JSON-serialisable"):
            mgr.save(1, state, data_state={"rng": np.random.default_rng(0)}, force=True)
        assert mgr.all_steps() == []


def test_save_every(tmp_path):
    _, state, _ = build()
    with CheckpointManager(tmp_path, save_every=3, max_to_keep=None, async_save=False) as mgr:
        saved = [s for s in range(1, 10) if mgr.save(s, state)]
    assert saved == [3, 6, 9]


def _place(state, mesh, spec_of):
    return jax.tree.map(lambda x: jax.device_put(x, NamedSharding(mesh, spec_of(x))), state)


def test_sharded_restore_into_another_mesh(tmp_path, devices):
    auto = jax.sharding.AxisType.Auto
    mesh_a = jax.make_mesh((8,), ("x",), axis_types=(auto,))
    mesh_b = jax.make_mesh((2, 4), ("a", "b"), axis_types=(auto, auto))
    # Source: last dimension split 8 ways; target: 2 x 4 over both dimensions (a different layout on every leaf).
    spec_a = lambda x: P(*[None] * (x.ndim - 1), "x") if x.ndim and x.shape[-1] % 8 == 0 else P()
    fits = lambda x, *sizes: x.ndim == len(sizes) and all(d % n == 0 for d, n in zip(x.shape, sizes, strict=True))
    spec_b = lambda x: P("a", "b") if fits(x, 2, 4) else P("b", "a") if fits(x, 4, 2) else P("b") if fits(x, 4) else P()
    _, state, _ = build()
    source, target = _place(state, mesh_a, spec_a), _place(state, mesh_b, spec_b)
    kernel = lambda s: s.params["l1"]["kernel"][...]
    assert kernel(source).sharding.spec == P(None, "x") and kernel(target).sharding.spec == P("a", "b")
    with CheckpointManager(tmp_path) as mgr:
        mgr.save(1, source, force=True)
    with CheckpointManager(tmp_path, create=False) as mgr:
        restored = mgr.restore(1, abstract_state(target)).state
    assert _equal(restored, state)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(target), strict=True):
        assert got.sharding == want.sharding


def test_keep_n_deletes_only_after_the_new_checkpoint_is_final(tmp_path):
    _, state, _ = build()
    keep, events = 2, []
    with CheckpointManager(tmp_path, max_to_keep=keep, async_save=True) as mgr:
        deleter = mgr._mgr._checkpoint_deleter  # orbax internals: observe what is on disk when it deletes
        original = deleter.delete_steps

        def observed(steps):
            on_disk = {int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()}
            final = {s for s in on_disk if (tmp_path / str(s) / "state" / "_METADATA").exists()}
            events.append((list(steps), final))
            return original(steps)

        deleter.delete_steps = observed
        for step in range(1, 6):
            mgr.save(step, state, data_state={"index": step}, force=True)
    deleted = sorted(s for steps, _ in events for s in steps)
    assert deleted == [1, 2, 3]
    for steps, final in events:
        for s in steps:  # the checkpoints that replace s were complete on disk before s went
            assert set(range(s + 1, s + 1 + keep)) <= final
    with CheckpointManager(tmp_path, create=False) as mgr:
        assert mgr.all_steps() == [4, 5]


def test_unfinished_save_leaves_previous_checkpoint_usable(tmp_path):
    _, state, _ = build()
    with CheckpointManager(tmp_path) as mgr:
        mgr.save(1, state, force=True)
        mgr.save(2, state, force=True)
    # What a process killed mid-save leaves behind: a half-written temporary directory of step 3.
    half = tmp_path / "3.orbax-checkpoint-tmp-1700000000000000"
    shutil.copytree(tmp_path / "2", half)
    (half / "state" / "_METADATA").unlink()
    with CheckpointManager(tmp_path) as mgr:
        assert mgr.all_steps() == [1, 2]
        assert mgr.restore_latest(abstract_state(state)).step == 2


def test_missing_directory_and_step_are_named(tmp_path):
    _, state, _ = build()
    missing = tmp_path / "nope"
    with pytest.raises(CheckpointError, match=f"{missing} does not exist"):
        CheckpointManager(missing, create=False)
    assert not missing.exists()
    with CheckpointManager(tmp_path) as mgr:
        with pytest.raises(CheckpointError, match=r"no checkpoint to restore in .*restore was requested"):
            mgr.restore_latest(abstract_state(state), required=True)
        assert mgr.restore_latest(abstract_state(state)) is None
        mgr.save(4, state, force=True)
        with pytest.raises(CheckpointError, match=r"no checkpoint of step 5 .* available steps: \[4\]"):
            mgr.restore(5, abstract_state(state))


# A failed read leaves a tensorstore callback that fires on orbax's closed event loop (harmless, orbax-internal).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_corrupt_error_lists_only_earlier_steps_that_look_valid(tmp_path):
    _, state, _ = build()
    with CheckpointManager(tmp_path, max_to_keep=None) as mgr:
        for step in (1, 2, 3):
            mgr.save(step, state, force=True)
    (tmp_path / "3" / "state" / "manifest.ocdbt").write_bytes(b"")
    (tmp_path / "1" / "state" / "_METADATA").unlink()
    with CheckpointManager(tmp_path, create=False) as mgr:
        with pytest.raises(CorruptCheckpointError) as e:
            mgr.restore_latest(abstract_state(state))
        assert e.value.step == 3
        assert str(tmp_path / "3") in str(e.value)
        assert "look valid: [2]" in str(e.value) and "unreadable: [1]" in str(e.value)
        assert mgr.all_steps() == [1, 2, 3]
        restored = mgr.restore_latest(abstract_state(state), on_corrupt="previous")
    assert restored.step == 2 and _equal(restored.state, state)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == ["1", "2"]
    assert (tmp_path.parent / f"{tmp_path.name}.corrupt" / "3").is_dir()

"""Placing host batches on a mesh (``stepjax.sharding.batch``), single process on 8 fake CPU devices.

The multi-process path (each process passing its own rows) is covered by ``test_multiprocess.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from stepjax.sharding import DEFAULT_RULES, batch_sharding, local_batch_rows, make_mesh, shard_batch, use_rules


def host_batch(batch_size: int = 8, length: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "inputs": rng.integers(0, 100, (batch_size, length), dtype=np.int32),
        "loss_mask": rng.random((batch_size, length)).astype(np.float32),
        "weights": rng.random((batch_size,)).astype(np.float32),
    }


def test_batch_sharding_splits_dim0_over_data_and_fsdp(devices):
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    assert batch_sharding(mesh).spec == P(("data", "fsdp"))
    assert batch_sharding(mesh, (("act_batch", "data"),)).spec == P("data")
    with use_rules((("act_batch", "fsdp"),)):
        assert batch_sharding(mesh).spec == P("fsdp")


def test_shard_batch_places_each_row_block_on_its_devices(devices):
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    batch = host_batch()
    out = shard_batch(batch, mesh, DEFAULT_RULES)
    assert out.keys() == batch.keys()
    for name, value in batch.items():
        arr = out[name]
        assert arr.shape == value.shape and arr.dtype == value.dtype
        np.testing.assert_array_equal(np.asarray(arr), value)
        assert arr.sharding.spec == P(("data", "fsdp"))
        for shard in arr.addressable_shards:
            # 4 batch shards of 2 rows; each is held twice (the two 'tensor' devices).
            assert shard.data.shape[0] == 2
            np.testing.assert_array_equal(np.asarray(shard.data), value[shard.index])
        assert len({s.index[0].start for s in arr.addressable_shards}) == 4


def test_replicated_batch_when_no_batch_axis_is_in_the_rules(devices):
    mesh = make_mesh({"tensor": 8})
    out = shard_batch(host_batch(), mesh)
    assert out["inputs"].sharding.is_fully_replicated
    np.testing.assert_array_equal(np.asarray(out["inputs"]), host_batch()["inputs"])


def test_local_batch_rows_in_a_single_process(devices):
    mesh = make_mesh({"data": 4, "tensor": 2})
    np.testing.assert_array_equal(local_batch_rows(mesh, 8), np.arange(8))


def test_bad_batches_are_named(devices):
    mesh = make_mesh({"data": 8})
    with pytest.raises(ValueError, match=r"batch\['inputs'\] has 6 rows.*8 batch shards"):
        shard_batch(host_batch(batch_size=6), mesh)
    with pytest.raises(ValueError, match=r"batch\['step'\] is a scalar"):
        shard_batch({"step": np.int32(3)}, mesh)
    with pytest.raises(ValueError, match="disagree on the batch size"):
        shard_batch({"a": np.zeros((8, 2)), "b": np.zeros((16, 2))}, mesh)

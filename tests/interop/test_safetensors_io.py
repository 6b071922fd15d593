"""The streaming safetensors reader and writer agree with the ``safetensors`` package in both directions."""

import json
import struct

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.flax import load_file as load_flax
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file

from stepjax.interop import InteropError
from stepjax.interop.safetensors_io import (
    PendingTensor,
    TensorReader,
    checkpoint_files,
    read_header,
    tensors_equal,
    write_safetensors,
)


def _arrays(rng):
    return {
        "a.weight": rng.standard_normal((37, 11)).astype(np.float32),
        "b.bias": rng.standard_normal((5,)).astype(np.float16),
        "c.ids": rng.integers(-9, 9, size=(3, 4, 2)).astype(np.int64),
        "d.scalar": np.asarray(3.5, np.float64),
        "e.empty": np.zeros((0, 4), np.float32),
    }


def test_reader_reads_library_files(tmp_path):
    arrays = _arrays(np.random.default_rng(0))
    save_file(arrays, str(tmp_path / "x.safetensors"), metadata={"format": "pt"})
    infos, metadata = read_header(tmp_path / "x.safetensors")
    assert metadata == {"format": "pt"} and set(infos) == set(arrays)
    with TensorReader() as reader:
        for name, want in arrays.items():
            got = reader.read(infos[name])
            assert got.dtype == want.dtype and got.shape == want.shape
            np.testing.assert_array_equal(got, want)
        # Strided destination and a cast: rows of a [37, 11] tensor written into the transpose of a [11, 37] buffer,
        # in blocks smaller than the tensor.
        dest = np.zeros((11, 37), np.float64)
        reader.read_into(infos["a.weight"], dest.T)
        np.testing.assert_array_equal(dest, arrays["a.weight"].T.astype(np.float64))
        assert tensors_equal(reader, infos["a.weight"], infos["a.weight"])
        assert not tensors_equal(reader, infos["a.weight"], infos["c.ids"])


def test_small_blocks(tmp_path, monkeypatch):
    import stepjax.interop.safetensors_io as io

    monkeypatch.setattr(io, "_BLOCK_BYTES", 64)  # several reads per tensor
    want = np.random.default_rng(1).standard_normal((50, 7)).astype(np.float32)
    save_file({"w": want}, str(tmp_path / "x.safetensors"))
    infos, _ = read_header(tmp_path / "x.safetensors")
    with TensorReader() as reader:
        out = np.empty((7, 50), jnp.bfloat16)
        reader.read_into(infos["w"], out.T)
    np.testing.assert_array_equal(out.T, want.astype(jnp.bfloat16))


def test_writer_output_loads_in_the_library(tmp_path):
    arrays = _arrays(np.random.default_rng(2))
    # bfloat16 is checked through a second reader too (the flax one, which builds jax arrays).
    arrays["f.bf16"] = np.random.default_rng(3).standard_normal((4, 6)).astype(jnp.bfloat16)
    pending = [PendingTensor(k, v.shape, v.dtype, lambda v=v: v) for k, v in arrays.items()]
    write_safetensors(tmp_path / "y.safetensors", pending)
    loaded = load_numpy(str(tmp_path / "y.safetensors")) | {
        "f.bf16": load_flax(str(tmp_path / "y.safetensors"))["f.bf16"]
    }
    assert set(loaded) == set(arrays)
    for name, want in arrays.items():
        got = np.asarray(loaded[name])
        assert got.dtype == want.dtype, name
        np.testing.assert_array_equal(got, want)
    raw = (tmp_path / "y.safetensors").read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    assert length % 8 == 0 and json.loads(raw[8 : 8 + length])["__metadata__"] == {"format": "pt"}


def test_writer_checks_announced_shape(tmp_path):
    bad = PendingTensor("w", (2, 3), np.float32, lambda: np.zeros((3, 2), np.float32))
    with pytest.raises(InteropError, match=r"'w'.*announced"):
        write_safetensors(tmp_path / "z.safetensors", [bad])


def test_truncated_and_malformed_files_are_named(tmp_path):
    save_file({"w": np.ones((64, 64), np.float32)}, str(tmp_path / "model.safetensors"))
    raw = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(raw[:-100])
    with pytest.raises(InteropError, match=r"model\.safetensors.*'w'.*truncated"):
        checkpoint_files(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(InteropError, match="malformed safetensors header"):
        checkpoint_files(tmp_path)


def test_index_must_agree_with_shards(tmp_path):
    save_file({"a": np.ones(3, np.float32)}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({"b": np.ones(3, np.float32)}, str(tmp_path / "model-00002-of-00002.safetensors"))
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert set(checkpoint_files(tmp_path)) == {"a", "b"}
    index["weight_map"]["b"] = "model-00001-of-00002.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(InteropError, match=r"'b' is listed in 'model-00001-of-00002\.safetensors'"):
        checkpoint_files(tmp_path)
    index["weight_map"]["c"] = "model-00003-of-00002.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(InteropError, match=r"shard 'model-00003-of-00002\.safetensors'.*does not exist"):
        checkpoint_files(tmp_path)
    (tmp_path / "model.safetensors.index.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"no model\.safetensors or model\.safetensors\.index\.json"):
        checkpoint_files(tmp_path)

"""Streaming safetensors reader and writer: one tensor (or a block of its rows) in host memory at a time.

The format (https://github.com/huggingface/safetensors): an 8-byte little-endian header length, a JSON header
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}``, then the raw
little-endian bytes. The ``safetensors`` package maps whole files into memory; every mapped page a loader touches
then counts in the process's resident memory until the file is closed, i.e. a full extra copy of the checkpoint.
Reading with ``readinto`` into the destination buffer instead keeps host memory at "the model plus one block".
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from stepjax.interop.errors import InteropError

#: safetensors dtype code <-> numpy dtype (bfloat16 / float8 come from ml_dtypes through jax.numpy).
DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(jnp.bfloat16),
    "F8_E4M3": np.dtype(jnp.float8_e4m3fn),
    "F8_E5M2": np.dtype(jnp.float8_e5m2),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
CODES: dict[np.dtype, str] = {v: k for k, v in DTYPES.items()}

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_MAX_HEADER = 100 * 1024 * 1024  # the reference implementation's limit
_BLOCK_BYTES = 8 * 1024 * 1024  # rows read per call when a tensor needs a cast or a transpose


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lies: ``file``, absolute byte ``offset`` of its data, ``dtype``, ``shape``."""

    name: str
    file: Path
    offset: int
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def read_header(path: str | os.PathLike) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """``({name: TensorInfo}, metadata)`` of one ``.safetensors`` file, validated against the file size.

    Raises ``InteropError`` naming the file (and tensor) for a truncated or malformed file.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise InteropError(f"{path}: not a safetensors file (only {size} bytes)")
        (length,) = struct.unpack("<Q", raw)
        if length > min(_MAX_HEADER, size - 8):
            raise InteropError(f"{path}: header length {length} exceeds the file ({size} bytes); truncated?")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InteropError(f"{path}: malformed safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise InteropError(f"{path}: malformed safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    start = 8 + length
    infos = {}
    for name, entry in header.items():
        try:
            code, shape, (begin, end) = entry["dtype"], tuple(int(d) for d in entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise InteropError(f"{path}: tensor {name!r} has a malformed header entry {entry!r}") from None
        if code not in DTYPES:
            raise InteropError(f"{path}: tensor {name!r} has dtype {code!r}; supported: {sorted(DTYPES)}")
        info = TensorInfo(name, path, start + int(begin), DTYPES[code], shape)
        if int(end) - int(begin) != info.nbytes or start + int(end) > size:
            raise InteropError(
                f"{path}: tensor {name!r} ({code}{list(shape)}) needs {info.nbytes} bytes at [{begin}, {end}) "
                f"but the file holds {size - start} data bytes; truncated or corrupt"
            )
        infos[name] = info
    return infos, metadata


def checkpoint_files(folder: str | os.PathLike) -> dict[str, TensorInfo]:
    """Every tensor of a Hugging Face model folder: ``model.safetensors``, or the shards of its index.

    Raises ``FileNotFoundError`` for a folder without weights and ``InteropError`` for an index that disagrees
    with its shards (a missing shard, a tensor listed in the wrong file).
    """
    folder = Path(folder)
    if (folder / SINGLE_FILE).is_file():
        return read_header(folder / SINGLE_FILE)[0]
    index_path = folder / INDEX_FILE
    if not index_path.is_file():
        found = sorted(p.name for p in folder.glob("*.safetensors"))
        hint = f"; found {found} but no {INDEX_FILE}" if found else ""
        raise FileNotFoundError(f"{folder}: no {SINGLE_FILE} or {INDEX_FILE}{hint}")
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise InteropError(f"{index_path}: malformed index ({e!r}); expected a 'weight_map' object") from None
    infos: dict[str, TensorInfo] = {}
    for file in sorted(set(weight_map.values())):
        if not (folder / file).is_file():
            listed = sorted(k for k, v in weight_map.items() if v == file)[:3]
            raise InteropError(f"{index_path}: shard {file!r} (holding e.g. {listed}) does not exist")
        infos.update(read_header(folder / file)[0])
    for name, file in weight_map.items():
        if name not in infos or infos[name].file.name != file:
            raise InteropError(f"{index_path}: tensor {name!r} is listed in {file!r} but that shard does not hold it")
    return infos


class TensorReader:
    """Reads tensors into caller-owned buffers; keeps one open handle per file. Use as a context manager."""

    def __init__(self):
        self._files: dict[Path, object] = {}
        self._scratch = np.empty(0, np.uint8)

    def __enter__(self) -> TensorReader:
        return self

    def __exit__(self, *exc) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def _read(self, info: TensorInfo, offset: int, out: memoryview) -> None:
        f = self._files.get(info.file)
        if f is None:
            f = self._files[info.file] = open(info.file, "rb", buffering=0)  # noqa: SIM115 (closed in __exit__)
        f.seek(offset)
        view, done = out.cast("B"), 0
        while done < len(view):
            n = f.readinto(view[done:])
            if not n:
                raise InteropError(f"{info.file}: unexpected end of file reading tensor {info.name!r}")
            done += n

    def read_into(self, info: TensorInfo, out: np.ndarray) -> None:
        """Fills ``out`` (shape ``info.shape``, any dtype, possibly a strided view) with the tensor's values.

        A contiguous ``out`` of the stored dtype is read into directly; otherwise blocks of rows go through a
        small scratch buffer and are cast / scattered into ``out``.
        """
        if tuple(out.shape) != info.shape:
            raise InteropError(f"tensor {info.name!r} has shape {info.shape}, the destination {tuple(out.shape)}")
        if out.dtype == info.dtype and out.flags.c_contiguous:
            if out.size:
                self._read(info, info.offset, memoryview(out.reshape(-1).view(np.uint8)))
            return
        rows = out.reshape(1, -1) if out.ndim == 0 else out  # scalars: one row
        row_shape = rows.shape[1:]
        row_bytes = max(1, math.prod(row_shape) * info.dtype.itemsize)
        per_block = max(1, _BLOCK_BYTES // row_bytes)
        for r0 in range(0, rows.shape[0], per_block):
            r1 = min(rows.shape[0], r0 + per_block)
            n = (r1 - r0) * row_bytes
            if self._scratch.size < n:
                self._scratch = np.empty(n, np.uint8)
            self._read(info, info.offset + r0 * row_bytes, memoryview(self._scratch[:n]))
            rows[r0:r1] = self._scratch[:n].view(info.dtype).reshape((r1 - r0, *row_shape))

    def read(self, info: TensorInfo) -> np.ndarray:
        """A fresh array holding the tensor (stored dtype)."""
        out = np.empty(info.shape, info.dtype)
        self.read_into(info, out)
        return out


def tensors_equal(reader: TensorReader, a: TensorInfo, b: TensorInfo) -> bool:
    """Whether two stored tensors hold the same values, compared block by block (little host memory)."""
    if a.shape != b.shape:
        return False
    rows = a.shape[0] if a.shape else 1
    row = math.prod(a.shape[1:]) if a.shape else 1
    step = max(1, _BLOCK_BYTES // max(1, row * 4))
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        blocks = []
        for info in (a, b):
            out = np.empty(((r1 - r0) * row,), info.dtype)
            reader._read(info, info.offset + r0 * row * info.dtype.itemsize, memoryview(out.view(np.uint8)))
            blocks.append(out.astype(np.float64))
        if not np.array_equal(*blocks):
            return False
    return True


@dataclass(frozen=True)
class PendingTensor:
    """A tensor to write: its name, shape and dtype up front (for the header), its values on demand."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    values: Callable[[], np.ndarray]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize


def write_safetensors(
    path: str | os.PathLike, tensors: Iterable[PendingTensor], metadata: Mapping[str, str] | None = None
) -> None:
    """Writes one ``.safetensors`` file, fetching each tensor's values only when its bytes are written."""
    tensors = list(tensors)
    header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for t in tensors:
        dtype = np.dtype(t.dtype)
        if dtype not in CODES:
            raise InteropError(f"tensor {t.name!r}: dtype {dtype} cannot be stored in safetensors")
        header[t.name] = {"dtype": CODES[dtype], "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned, as the reference writer does
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for t in tensors:
            array = np.asarray(t.values())
            if tuple(array.shape) != tuple(t.shape) or array.dtype != np.dtype(t.dtype):
                raise InteropError(
                    f"tensor {t.name!r}: produced {array.dtype}{list(array.shape)}, announced "
                    f"{np.dtype(t.dtype)}{list(t.shape)}"
                )
            array = np.ascontiguousarray(array)
            if array.dtype.byteorder == ">":
                array = array.astype(array.dtype.newbyteorder("<"))
            f.write(memoryview(array.reshape(-1).view(np.uint8)))

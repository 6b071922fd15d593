"""Export a stepjax ``DecoderLM`` as a Hugging Face model folder: ``config.json`` + safetensors split by size."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from stepjax.interop.atomic import atomic_directory
from stepjax.interop.errors import InteropError
from stepjax.interop.load import CONFIG_FILE, dtype_name
from stepjax.interop.placement import flat_variables
from stepjax.interop.safetensors_io import INDEX_FILE, SINGLE_FILE, PendingTensor, write_safetensors
from stepjax.models.llm import LLMConfig
from stepjax.models.llm.config import DTYPES
from stepjax.models.llm.params import TensorMapping, config_to_hf, tensor_mappings

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS |= {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(size: int | str) -> int:
    """Bytes in ``size``: an int, or ``"5GB"`` (10^9 bytes), ``"500MiB"`` (2^20), ``"100KB"``, as transformers reads
    them."""
    if isinstance(size, int) and not isinstance(size, bool):
        value = size
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(size))
        if not match or match.group(2).upper() not in _UNITS:
            raise InteropError(f"max_shard_size {size!r} is not a size; expected e.g. 2000000000, '5GB' or '500MiB'")
        value = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    if value <= 0:
        raise InteropError(f"max_shard_size must be positive, got {size!r}")
    return value


def flat_params(params: Any) -> dict[tuple, Any]:
    """``{path tuple: array}`` from a model, an ``nnx.State``, a nested dict, or an already flat dict."""
    if isinstance(params, nnx.Module):
        params = nnx.state(params, nnx.Param)
    if isinstance(params, nnx.State):
        return {p: v.get_value() for p, v in flat_variables(params).items()}
    if isinstance(params, Mapping) and params and all(isinstance(k, tuple) for k in params):
        return dict(params)
    out = {}

    def walk(node: Mapping, prefix: tuple) -> None:
        for key, value in node.items():
            if isinstance(value, Mapping):
                walk(value, (*prefix, key))
            else:
                out[(*prefix, key)] = value

    walk(params, ())
    return out


def _host(array: Any) -> np.ndarray:
    if isinstance(array, jax.Array) and not array.is_fully_addressable:
        raise InteropError(
            "save_hf writes from one process: gather parameters that span hosts first "
            "(jax.experimental.multihost_utils.process_allgather)"
        )
    return np.asarray(jax.device_get(array))


def _pending(cfg: LLMConfig, flat: Mapping[tuple, Any], dtype: np.dtype) -> list[PendingTensor]:
    """One ``PendingTensor`` per Hugging Face tensor, checked against ``cfg``; values are fetched when written."""
    try:
        mappings = tensor_mappings(cfg)
    except ValueError as e:
        raise InteropError(str(e)) from e
    expected: dict[tuple, tuple] = {}
    for m in mappings:
        p = m.model_path(cfg.scan_layers)
        expected[p] = (cfg.num_layers, *m.shape) if p != m.path else m.shape
    missing = [p for p in expected if p not in flat]
    extra = sorted((p for p in flat if p not in expected), key=str)
    if missing or extra:
        raise InteropError(
            f"parameters do not match the config: missing {['/'.join(map(str, p)) for p in missing]}, "
            f"unexpected {['/'.join(map(str, p)) for p in extra]}"
        )
    for p, shape in expected.items():
        if tuple(np.shape(flat[p])) != shape:
            raise InteropError(
                f"parameter {'/'.join(map(str, p))} has shape {list(np.shape(flat[p]))}, expected {list(shape)}"
            )

    def values(m: TensorMapping):
        source = flat[m.model_path(cfg.scan_layers)]
        per_layer = source[m.layer] if cfg.scan_layers and m.layer is not None else source
        return lambda: np.ascontiguousarray(m.transform.to_hf(_host(per_layer), m.shape)).astype(dtype, copy=False)

    # Layer by layer, embeddings first, head last: a shard then holds whole layers, as transformers writes them.
    def order(m: TensorMapping) -> tuple:
        if m.layer is not None:
            return (1, m.layer)
        return (0, 0) if m.hf_name.startswith("model.embed") else (2, 0)

    ordered = sorted(mappings, key=order)  # stable: key-table order within a layer
    return [PendingTensor(m.hf_name, m.hf_shape, dtype, values(m)) for m in ordered]


def _split(tensors: Sequence[PendingTensor], max_bytes: int) -> list[list[PendingTensor]]:
    shards: list[list[PendingTensor]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


def save_hf(
    path: str | os.PathLike,
    cfg: LLMConfig,
    params: Any,
    *,
    max_shard_size: int | str = "5GB",
    dtype: Any = None,
    extra_config: Mapping[str, Any] | None = None,
    extra_files: Sequence[str | os.PathLike] = (),
    overwrite: bool = False,
) -> Path:
    """Writes ``params`` as a Hugging Face model folder that ``transformers.AutoModelForCausalLM`` loads.

    Args:
      path: destination folder. It is built in a temporary sibling and renamed into place when complete: if
        anything fails, nothing half-written remains and an existing ``path`` is untouched.
      cfg: the model config (family from its flags: Llama, Qwen2 with ``qkv_bias``, Qwen3 with ``qk_norm``).
      params: a ``DecoderLM``, its ``nnx.State``, or a nested / flat dict of its parameters (scan-stacked or not, as
        ``cfg.scan_layers`` says).
      max_shard_size: bytes per safetensors file (int, or ``"5GB"`` / ``"500MiB"``); several files get
        ``model-0000i-of-0000n.safetensors`` names and a ``model.safetensors.index.json``.
      dtype: stored dtype (``"bfloat16"``...); default: each parameter's own (``cfg.param_dtype``).
      extra_config: ``config.json`` fields stepjax does not model (``bos_token_id``, ``eos_token_id``...), e.g. the
        original model's config; fields stepjax knows are recomputed from ``cfg``.
      extra_files: files copied into the folder (``tokenizer.json``, ``tokenizer_config.json``...).
      overwrite: replace an existing non-empty ``path`` (else ``FileExistsError`` before writing anything).
    Returns:
      The folder's path.
    Raises:
      InteropError: ``cfg`` has no Hugging Face equivalent (naming the field), or ``params`` do not fit ``cfg``
        (naming the parameter).
    """
    flat = flat_params(params)
    if dtype is None:
        dtypes = {np.dtype(getattr(v, "dtype", np.float32)).name for v in flat.values()}
        dtype = dtypes.pop() if len(dtypes) == 1 else cfg.param_dtype
    name = dtype_name(dtype)
    try:
        hf_config = config_to_hf(cfg, extra_config, dtype=name)
    except ValueError as e:
        raise InteropError(str(e)) from e
    tensors = _pending(cfg, flat, np.dtype(DTYPES[name]))
    shards = _split(tensors, parse_size(max_shard_size))
    sources = [Path(f) for f in extra_files]
    for f in sources:
        if not f.is_file():
            raise FileNotFoundError(f"extra file {f} does not exist")
    with atomic_directory(path, overwrite=overwrite) as tmp:
        names = (
            [SINGLE_FILE]
            if len(shards) == 1
            else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        )
        for file, shard in zip(names, shards, strict=True):
            write_safetensors(tmp / file, shard, {"format": "pt"})
        if len(shards) > 1:
            index = {
                "metadata": {
                    "total_size": sum(t.nbytes for t in tensors),
                    "total_parameters": sum(int(np.prod(t.shape)) for t in tensors),
                },
                "weight_map": dict(sorted((t.name, f) for f, s in zip(names, shards, strict=True) for t in s)),
            }
            (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        (tmp / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2) + "\n")
        for f in sources:
            shutil.copyfile(f, tmp / f.name)
    return Path(path).absolute()

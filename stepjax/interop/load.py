"""Load a Hugging Face model folder (Llama, Qwen2/2.5, Qwen3) into a sharded stepjax ``DecoderLM``.

Tensors move one at a time: each parameter gets a host buffer in its stepjax layout, the safetensors bytes are
read straight into it (transposes and casts happen block by block on the way), and the buffer becomes the device
array (adopted without a copy on CPU, else copied to the devices and dropped). Host memory therefore peaks near
"the parameters placed so far + one parameter"; the largest parameters go first so that this stays close to one
copy of the model. With ``scan_layers`` a stacked parameter's buffer is filled layer by layer, never stacked from
copies.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from stepjax.interop.errors import InteropError
from stepjax.interop.placement import abstract_params, aligned_empty, flat_variables, param_shardings, place
from stepjax.interop.safetensors_io import TensorInfo, TensorReader, checkpoint_files, tensors_equal
from stepjax.models.llm import DecoderLM, LLMConfig
from stepjax.models.llm.config import DTYPES
from stepjax.models.llm.params import TIED_HEAD, TIED_SOURCE, config_from_hf, is_ignored_tensor, tensor_mappings

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON object from ``path``; ``FileNotFoundError`` / ``InteropError`` name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        out = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InteropError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(out, dict):
        raise InteropError(f"{path}: expected a JSON object, got {type(out).__name__}")
    return out


def dtype_name(dtype: Any) -> str:
    """``"bfloat16"`` for any spelling (``jnp.bfloat16``, ``np.dtype``, ``"bf16"``...) of a parameter dtype."""
    aliases = {"bf16": "bfloat16", "fp32": "float32", "fp16": "float16", "half": "float16", "float": "float32"}
    name = aliases.get(dtype, dtype) if isinstance(dtype, str) else np.dtype(dtype).name
    if name not in DTYPES:
        raise InteropError(f"dtype {dtype!r} is not supported; expected one of {sorted(DTYPES)}")
    return name


def _checkpoint_dtype(hf_config: Mapping[str, Any], infos: Mapping[str, TensorInfo]) -> str:
    """The stored dtype: ``config.json`` ``dtype``/``torch_dtype``, else the embedding's dtype."""
    for key in ("dtype", "torch_dtype"):
        value = hf_config.get(key)
        if isinstance(value, str) and value.removeprefix("torch.") in DTYPES:
            return value.removeprefix("torch.")
    info = infos.get(TIED_SOURCE) or next(iter(infos.values()), None)
    if info is not None and info.dtype.name in DTYPES:
        return info.dtype.name
    return "float32"


def _check_tensors(infos: Mapping[str, TensorInfo], mappings: list, cfg: LLMConfig, strict: bool) -> None:
    """Missing, misshapen and (``strict``) unexpected tensors, each named, before anything is read."""
    missing = [m.hf_name for m in mappings if m.hf_name not in infos]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise InteropError(f"missing tensor {missing[0]!r}{more}: the checkpoint does not fit this config.json")
    for m in mappings:
        got = infos[m.hf_name].shape
        if got != m.hf_shape:
            raise InteropError(
                f"tensor {m.hf_name!r} in {infos[m.hf_name].file.name} has shape {list(got)}, expected "
                f"{list(m.hf_shape)} from config.json"
            )
    known = {m.hf_name for m in mappings} | ({TIED_HEAD} if cfg.tie_embeddings else set())
    unexpected = sorted(n for n in infos if n not in known and not is_ignored_tensor(n))
    if unexpected and strict:
        raise InteropError(
            f"unexpected tensors {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''} ({len(unexpected)} in all) "
            "map to no parameter of this config; pass strict=False to ignore them"
        )
    if unexpected:
        log.warning("ignoring %d tensors with no stepjax parameter: %s", len(unexpected), unexpected[:8])


def load_hf_params(
    path: str | os.PathLike,
    cfg: LLMConfig,
    *,
    mesh: Mesh | None = None,
    rules: Any = None,
    strict: bool = True,
) -> dict:
    """The safetensors of model folder ``path`` as ``DecoderLM(cfg)`` parameters, each placed in its sharding.

    Args:
      path: folder with ``model.safetensors`` or ``model.safetensors.index.json`` and its shards.
      cfg: the target config (``scan_layers`` decides whether layers are stacked); parameters are cast to
        ``cfg.param_dtype``.
      mesh: target mesh; each parameter's ``NamedSharding`` follows from its logical axes and ``rules``. ``None``:
        the first default device.
      rules: logical-axis rules (default: the active table, ``stepjax.sharding.DEFAULT_RULES`` unless set).
      strict: raise on tensors that map to no parameter (else log and skip them).
    Returns:
      ``{path tuple: jax.Array}`` for every parameter, e.g. ``("layers", 0, "attn", "q_proj", "kernel")`` ->
      ``[D, N, H]`` (with ``scan_layers``: ``("layers", "attn", "q_proj", "kernel")`` -> ``[L, D, N, H]``).
    Raises:
      InteropError: naming a missing, misshapen or unexpected tensor, or a corrupt file.
    """
    infos = checkpoint_files(path)
    try:
        mappings = tensor_mappings(cfg)
    except ValueError as e:  # a config with no Hugging Face equivalent (e.g. LayerNorm, GELU MLP)
        raise InteropError(str(e)) from e
    _check_tensors(infos, mappings, cfg, strict)
    _, state = abstract_params(lambda: DecoderLM(cfg, rngs=nnx.Rngs(0)))
    variables = flat_variables(state)
    shardings = param_shardings(state, mesh, rules)
    groups: dict[tuple, list] = {}
    for m in mappings:
        groups.setdefault(m.model_path(cfg.scan_layers), []).append(m)
    if set(groups) != set(variables):
        raise InteropError(f"key map and model disagree: {sorted(set(groups) ^ set(variables), key=str)}")

    def nbytes(p: tuple) -> int:
        v = variables[p].get_value()
        return int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize

    out = {}
    with TensorReader() as reader:
        tied_head = cfg.tie_embeddings and TIED_HEAD in infos
        if tied_head and not tensors_equal(reader, infos[TIED_HEAD], infos[TIED_SOURCE]):
            raise InteropError(
                f"tensor {TIED_HEAD!r} differs from {TIED_SOURCE!r} but config.json ties them (tie_word_embeddings)"
            )
        # Largest first: the transient buffer of a big parameter then sits on top of few placed ones.
        for p in sorted(groups, key=nbytes, reverse=True):
            abstract = variables[p].get_value()
            dest = aligned_empty(tuple(abstract.shape), abstract.dtype)
            for m in groups[p]:
                target = dest[m.layer] if cfg.scan_layers and m.layer is not None else dest
                reader.read_into(infos[m.hf_name], m.transform.hf_view(target))
            out[p] = place(dest, shardings[p])
            del dest
    log.info("loaded %d tensors from %s", len(mappings), path)
    return out


def load_hf(
    path: str | os.PathLike,
    mesh: Mesh | None = None,
    dtype: Any = None,
    *,
    rules: Any = None,
    strict: bool = True,
    compute_dtype: Any = None,
    **config_overrides: Any,
) -> tuple[LLMConfig, DecoderLM]:
    """Loads a Hugging Face model folder into a stepjax ``DecoderLM`` whose parameters are already sharded.

    Reads ``config.json`` (``model_type`` llama, qwen2 or qwen3) and the safetensors weights (single file or shards
    with ``model.safetensors.index.json``), one tensor at a time, straight into each parameter's target sharding.

    Args:
      path: the model folder (as written by ``save_pretrained`` or ``save_hf``).
      mesh: target mesh (e.g. ``stepjax.sharding.make_mesh({"fsdp": 2, "tensor": 4})``); ``None``: one device.
      dtype: parameter (storage) dtype, e.g. ``"bfloat16"``; ``None`` keeps the checkpoint's dtype.
      rules: logical-axis rules for the shardings (default: the active table).
      strict: raise on checkpoint tensors that map to no parameter.
      compute_dtype: the model's compute dtype (``LLMConfig.dtype``); default: the parameter dtype.
      **config_overrides: stepjax-only ``LLMConfig`` fields, e.g. ``scan_layers=True``, ``remat="full"``.
    Returns:
      ``(cfg, model)``. ``graphdef, state = nnx.split(model)`` gives the pure-function form; every leaf of
      ``state`` is a ``jax.Array`` with its ``NamedSharding``.
    Raises:
      FileNotFoundError: no ``config.json`` or no weights in ``path``.
      InteropError: an unsupported ``config.json`` field, a missing, misshapen or unexpected tensor (each named).

    Example::

        cfg, model = load_hf("Qwen2.5-0.5B", mesh=make_mesh({"fsdp": 2, "tensor": 4}), dtype="bfloat16")
        logits = model(tokens)  # under jax.set_mesh(mesh)
    """
    for key in ("dtype", "param_dtype"):
        if key in config_overrides:
            raise TypeError(f"load_hf: set {key!r} with dtype= (parameters) or compute_dtype= (compute)")
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    hf_config = read_json(folder / CONFIG_FILE)
    infos = checkpoint_files(folder)
    param_dtype = dtype_name(dtype) if dtype is not None else _checkpoint_dtype(hf_config, infos)
    compute = dtype_name(compute_dtype) if compute_dtype is not None else param_dtype
    try:
        cfg = config_from_hf(hf_config, param_dtype=param_dtype, dtype=compute, **config_overrides)
    except (ValueError, TypeError) as e:
        raise InteropError(f"{folder / CONFIG_FILE}: {e}") from e
    params = load_hf_params(folder, cfg, mesh=mesh, rules=rules, strict=strict)
    return cfg, assemble_model(cfg, params)


def assemble_model(cfg: LLMConfig, params: Mapping[tuple, jax.Array]) -> DecoderLM:
    """A ``DecoderLM(cfg)`` holding ``params`` (``{path tuple: array}``), built without initialising anything."""
    graphdef, state = abstract_params(lambda: DecoderLM(cfg, rngs=nnx.Rngs(0)))
    variables = flat_variables(state)
    missing = sorted(set(variables) - set(params), key=str)
    if missing:
        raise InteropError(f"no value for parameters {['/'.join(map(str, p)) for p in missing]}")
    for p, var in variables.items():
        want, got = var.get_value(), params[p]
        if tuple(got.shape) != tuple(want.shape) or got.dtype != want.dtype:
            raise InteropError(
                f"parameter {'/'.join(map(str, p))} is {got.dtype}{list(got.shape)}, the model expects "
                f"{want.dtype}{list(want.shape)}"
            )
        var.set_value(got)
    return nnx.merge(graphdef, state)

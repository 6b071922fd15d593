"""A model's parameters as an Orbax checkpoint plus its config: the stepjax side of ``recipes.convert``.

Folder layout::

    params/               Orbax StandardCheckpointer tree ({"embed": {"embedding": [V, D]}, "layers": {"0": ...}})
    stepjax_config.json   the LLMConfig fields
    hf_config.json        optional: the original Hugging Face config.json (fields stepjax does not model survive
                          a round trip, e.g. bos/eos token ids)

Arrays are stored exactly (dtype and bytes); restoring places each one straight into its target sharding.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh

from stepjax.interop.atomic import atomic_directory
from stepjax.interop.errors import InteropError
from stepjax.interop.load import assemble_model, read_json
from stepjax.interop.placement import abstract_params, flat_variables, param_shardings
from stepjax.interop.save import flat_params
from stepjax.models.llm import DecoderLM, LLMConfig

PARAMS_DIR, CONFIG_FILE, HF_CONFIG_FILE = "params", "stepjax_config.json", "hf_config.json"


def config_to_json(cfg: LLMConfig) -> dict[str, Any]:
    out = dataclasses.asdict(cfg)
    if cfg.rope_scaling is not None:
        out["rope_scaling"] = dict(cfg.rope_scaling)
    return out


def config_from_json(fields: Mapping[str, Any], source: str = CONFIG_FILE) -> LLMConfig:
    known = {f.name for f in dataclasses.fields(LLMConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise InteropError(f"{source}: unknown LLMConfig fields {unknown}")
    try:
        return LLMConfig(**fields)
    except (TypeError, ValueError) as e:
        raise InteropError(f"{source}: {e}") from e


def _nested(flat: Mapping[tuple, Any]) -> dict:
    """``{path tuple: leaf}`` -> nested dict with string keys (Orbax names arrays by their key path)."""
    out: dict = {}
    for path, leaf in flat.items():
        node = out
        for key in path[:-1]:
            node = node.setdefault(str(key), {})
        node[str(path[-1])] = leaf
    return out


def _flat(nested: Mapping, prefix: tuple = ()) -> dict[tuple, Any]:
    out = {}
    for key, value in nested.items():
        key = int(key) if isinstance(key, str) and key.isdigit() else key
        if isinstance(value, Mapping):
            out.update(_flat(value, (*prefix, key)))
        else:
            out[(*prefix, key)] = value
    return out


def save_orbax_params(
    path: str | os.PathLike,
    cfg: LLMConfig,
    params: Any,
    *,
    hf_config: Mapping[str, Any] | None = None,
    extra_files: Sequence[str | os.PathLike] = (),
    overwrite: bool = False,
) -> Path:
    """Writes ``params`` (a ``DecoderLM``, its state, or a dict) and ``cfg`` as an Orbax params checkpoint folder.

    Built in a temporary sibling folder and renamed into place: a failure leaves nothing half-written and an
    existing ``path`` untouched. ``hf_config``: the original ``config.json`` to keep beside it; ``extra_files``
    (tokenizer files...) are copied in. Single process only.
    """
    tree = _nested(flat_params(params))
    sources = [Path(f) for f in extra_files]
    for f in sources:
        if not f.is_file():
            raise FileNotFoundError(f"extra file {f} does not exist")
    with atomic_directory(path, overwrite=overwrite) as tmp:
        checkpointer = ocp.StandardCheckpointer()
        try:
            checkpointer.save(tmp / PARAMS_DIR, tree)
            checkpointer.wait_until_finished()
        finally:
            checkpointer.close()
        (tmp / CONFIG_FILE).write_text(json.dumps(config_to_json(cfg), indent=2) + "\n")
        if hf_config is not None:
            (tmp / HF_CONFIG_FILE).write_text(json.dumps(dict(hf_config), indent=2) + "\n")
        for f in sources:
            shutil.copyfile(f, tmp / f.name)
    return Path(path).absolute()


def load_orbax_params(
    path: str | os.PathLike, mesh: Mesh | None = None, *, rules: Any = None, **config_overrides: Any
) -> tuple[LLMConfig, DecoderLM]:
    """Restores a ``save_orbax_params`` folder into a ``DecoderLM`` whose parameters sit in their shardings.

    ``config_overrides`` may change fields that leave the parameters as stored (``remat``, ``dtype`` (compute),
    ``max_seq_len``); a change of shapes, dtype or layer stacking raises ``InteropError`` naming the parameter.
    Returns ``(cfg, model)`` like ``load_hf``.
    """
    folder = Path(path)
    if not (folder / PARAMS_DIR).is_dir():
        raise FileNotFoundError(f"{folder}: no Orbax params checkpoint ({PARAMS_DIR}/ is missing)")
    saved = config_from_json(read_json(folder / CONFIG_FILE), str(folder / CONFIG_FILE))
    try:
        cfg = saved.replace(**config_overrides)
    except (TypeError, ValueError) as e:
        raise InteropError(f"config override: {e}") from e
    _, state = abstract_params(lambda: DecoderLM(cfg, rngs=nnx.Rngs(0)))
    _, saved_state = abstract_params(lambda: DecoderLM(saved, rngs=nnx.Rngs(0)))
    variables, stored = flat_variables(state), flat_variables(saved_state)
    for p in sorted(set(variables) | set(stored), key=str):
        a, b = (None if v is None else v.get_value() for v in (variables.get(p), stored.get(p)))
        if a is None or b is None or (a.shape, a.dtype) != (b.shape, b.dtype):
            raise InteropError(
                f"config overrides {sorted(config_overrides)} change parameter {'/'.join(map(str, p))}; "
                "an Orbax params checkpoint restores only in its stored layout"
            )
    shardings = param_shardings(state, mesh, rules)
    target = _nested(
        {
            p: jax.ShapeDtypeStruct(v.get_value().shape, v.get_value().dtype, sharding=shardings[p])
            for p, v in variables.items()
        }
    )
    checkpointer = ocp.StandardCheckpointer()
    try:
        restored = checkpointer.restore(folder / PARAMS_DIR, target)
    except (ValueError, KeyError, FileNotFoundError) as e:
        raise InteropError(f"{folder / PARAMS_DIR}: does not hold the parameters of {CONFIG_FILE} ({e})") from e
    finally:
        checkpointer.close()
    return cfg, assemble_model(cfg, _flat(restored))

"""Hugging Face interop: safetensors model folders <-> sharded stepjax models, and Orbax params checkpoints.

- ``load_hf(path, mesh=None, dtype=None)`` -> ``(LLMConfig, DecoderLM)``: Llama / Qwen2 / Qwen3 folders, tensor by
  tensor, straight into the target sharding.
- ``save_hf(path, cfg, model)``: ``config.json`` + safetensors split by size (with an index), loadable by
  transformers; written to a temporary folder and renamed into place.
- ``save_orbax_params`` / ``load_orbax_params``: the same parameters as an Orbax checkpoint plus the config.
"""

from stepjax.interop.errors import InteropError
from stepjax.interop.load import assemble_model, load_hf, load_hf_params
from stepjax.interop.orbax_io import load_orbax_params, save_orbax_params
from stepjax.interop.save import parse_size, save_hf

__all__ = [
    "InteropError",
    "assemble_model",
    "load_hf",
    "load_hf_params",
    "load_orbax_params",
    "parse_size",
    "save_hf",
    "save_orbax_params",
]

"""Decoder-only LMs: Llama-3, Qwen2/2.5/3 and Step1 (sqrt-ALiBi) shapes in one model."""

from stepjax.models.llm.cache import KVCache, cache_shardings
from stepjax.models.llm.config import LLMConfig
from stepjax.models.llm.model import DecoderLayer, DecoderLM
from stepjax.models.llm.params import config_from_hf, hf_to_params, load_params_into, params_to_hf
from stepjax.models.llm.presets import PRESETS, llm_preset

__all__ = [
    "PRESETS",
    "DecoderLM",
    "DecoderLayer",
    "KVCache",
    "LLMConfig",
    "cache_shardings",
    "config_from_hf",
    "hf_to_params",
    "llm_preset",
    "load_params_into",
    "params_to_hf",
]

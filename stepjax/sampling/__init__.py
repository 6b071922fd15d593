"""Decoding: the KV-cache sampler (prefill + jitted decode loop, sampling rules, log-probs, finished-row callback)
and greedy decoding by full recomputation (for models without a cache path)."""

from stepjax.sampling.callbacks import FinishedRow, RowCallback
from stepjax.sampling.config import FINISH_LENGTH, FINISH_STOP, SamplingConfig
from stepjax.sampling.engine import SampleOutput, generate, generate_from_model, pad_prompts
from stepjax.sampling.greedy import greedy_generate
from stepjax.sampling.processors import ban_repetition, choose, min_p, temperature, token_logprobs, top_k, top_p, warp

__all__ = [
    "FINISH_LENGTH",
    "FINISH_STOP",
    "FinishedRow",
    "RowCallback",
    "SampleOutput",
    "SamplingConfig",
    "ban_repetition",
    "choose",
    "generate",
    "generate_from_model",
    "greedy_generate",
    "min_p",
    "pad_prompts",
    "temperature",
    "token_logprobs",
    "top_k",
    "top_p",
    "warp",
]

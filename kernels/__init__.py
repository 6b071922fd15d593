"""Pallas kernels for the hot paths, each with a pure-JAX reference, a dispatcher and a ``shard_map`` wrapper.

* ``flash_attention``: forward + backward, causal and segment masks, ALiBi (linear or the Step1 square-root), GQA;
* ``decode_attention``: one query token per row against a KV cache with per-row lengths (split-K);
* ``fused_logprob``: log-prob / cross-entropy over the vocabulary in chunks, forward + backward.

Dispatchers take ``impl="auto"`` (kernel on accelerators, JAX elsewhere), ``"reference"`` or ``"pallas"``
(interpreted on CPU). Installed as ``stepjax.kernels`` (setup.cfg ``package_dir``); imports nothing else of stepjax.
"""

from .decode_attention import (
    decode_attention,
    decode_attention_pallas,
    decode_attention_reference,
    decode_attention_sharded,
)
from .flash_attention import (
    BlockSizes,
    default_block_sizes,
    flash_attention,
    flash_attention_pallas,
    flash_attention_reference,
    flash_attention_sharded,
)
from .fused_logprob import (
    fused_logprob,
    fused_logprob_chunked,
    fused_logprob_pallas,
    fused_logprob_reference,
    fused_logprob_sharded,
)

__all__ = [
    "BlockSizes",
    "decode_attention",
    "decode_attention_pallas",
    "decode_attention_reference",
    "decode_attention_sharded",
    "default_block_sizes",
    "flash_attention",
    "flash_attention_pallas",
    "flash_attention_reference",
    "flash_attention_sharded",
    "fused_logprob",
    "fused_logprob_chunked",
    "fused_logprob_pallas",
    "fused_logprob_reference",
    "fused_logprob_sharded",
]

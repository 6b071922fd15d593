"""The LM loss's vocabulary projection without ``[batch, len, vocab]`` logits (``LLMConfig.logprob_impl``).

``fused_head_stats`` returns what ``stepjax.objectives.lm.lm_loss_terms`` needs -- ``-log p(target)``, the
logsumexp (z-loss) and whether the target is the argmax (accuracy) -- from the final hidden states and the output
head ``[d, vocab]``: log-probs through ``stepjax.kernels.fused_logprob`` (its ``custom_vjp`` recomputes each
vocabulary chunk in the backward pass), the argmax through a forward-only scan over the same chunks (one more
``hidden @ W`` in chunks, no gradient). Under a multi-device mesh the log-prob goes through
``fused_logprob_sharded``: tokens over the activations' batch (and sequence) axes, vocabulary over ``act_vocab``'s.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from stepjax.kernels import fused_logprob, fused_logprob_sharded
from stepjax.nn.kernel_dispatch import kernel_mesh, mesh_axes

#: Vocabulary columns per chunk (``fused_logprob``'s default).
DEFAULT_CHUNK = 4096


def head_weight(model: nnx.Module) -> jax.Array:
    """A ``DecoderLM``'s output head as ``[d, vocab]`` in the compute dtype (the transposed embedding when tied).

    Raises ``ValueError`` for a head with a bias (the fused log-prob has no bias term).
    """
    if model.lm_head is not None and model.lm_head.bias is not None:
        raise ValueError("logprob_impl != 'full' needs an output head without bias; use logprob_impl='full'")
    kernel = model.embed.embedding[...].T if model.lm_head is None else model.lm_head.kernel[...]
    return kernel.astype(model.cfg.compute_dtype)


def target_logprobs(
    hidden: jax.Array, weight: jax.Array, targets: jax.Array, *, impl: str, chunk_size: int = DEFAULT_CHUNK
) -> tuple[jax.Array, jax.Array]:
    """``(log p(target), logsumexp)`` float32 ``[b, t]`` for ``hidden [b, t, d]``, ``weight [d, V]``.

    ``impl``: ``fused_logprob``'s (``"chunked"``, ``"pallas"``, ``"auto"``, ``"reference"``).
    """
    kwargs = dict(impl=impl, chunk_size=chunk_size, return_lse=True)
    mesh = kernel_mesh() if impl != "reference" else None
    if mesh is None:
        return fused_logprob(hidden, weight, targets, **kwargs)
    b, t, d = hidden.shape
    # [b, t] flattens row-major, so a batch sharded over (data, fsdp) and a length over sequence give tokens
    # sharded over (data, fsdp, sequence) without moving data.
    tokens = mesh_axes(mesh, "act_batch", (b,)) + mesh_axes(mesh, "act_len", (t,))
    if (b * t) % math.prod(mesh.shape[a] for a in tokens):
        tokens = mesh_axes(mesh, "act_batch", (b,))
    vocab = mesh_axes(mesh, "act_vocab", (weight.shape[1],))
    lp, lse = fused_logprob_sharded(
        hidden.reshape(b * t, d),
        weight,
        targets.reshape(b * t),
        mesh=mesh,
        token_axes=tokens,
        vocab_axis=vocab,
        **kwargs,
    )
    return lp.reshape(b, t), lse.reshape(b, t)


def target_is_argmax(hidden: jax.Array, weight: jax.Array, targets: jax.Array, chunk_size: int) -> jax.Array:
    """``argmax(hidden @ weight) == targets`` (bool ``[...]``) by a scan over vocabulary chunks; no gradient.

    Ties go to the lowest index, as ``jnp.argmax``: within a chunk by ``argmax``, across chunks by a strict ``>``.
    The last chunk is slid back to end at the vocabulary (like ``fused_logprob_chunked``); its columns already seen
    are ignored.
    """
    h = lax.stop_gradient(hidden).reshape(-1, hidden.shape[-1])
    w = lax.stop_gradient(weight)
    vocab = w.shape[1]
    chunk = max(1, min(int(chunk_size), vocab))

    def step(carry, i):
        best, index = carry
        start = jnp.minimum(i * chunk, vocab - chunk)
        z = jnp.dot(h, lax.dynamic_slice_in_dim(w, start, chunk, axis=1), preferred_element_type=jnp.float32)
        cols = start + jnp.arange(chunk)
        z = jnp.where(cols[None, :] >= i * chunk, z, -jnp.inf)
        top, arg = jnp.max(z, axis=1), start + jnp.argmax(z, axis=1)
        better = top > best
        return (jnp.where(better, top, best), jnp.where(better, arg, index)), None

    init = (jnp.full((h.shape[0],), -jnp.inf, jnp.float32), jnp.zeros((h.shape[0],), jnp.int32))
    (_, index), _ = lax.scan(step, init, jnp.arange(-(-vocab // chunk)))
    return index.reshape(targets.shape) == targets


def fused_head_stats(
    model: nnx.Module,
    hidden: jax.Array,
    targets: jax.Array,
    *,
    impl: str,
    chunk_size: int = DEFAULT_CHUNK,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(nll, lse, correct)``, each ``[b, t]``, for a ``DecoderLM``'s final hidden states ``[b, t, d]``."""
    weight = head_weight(model)
    hidden = hidden.astype(model.cfg.compute_dtype)
    logp, lse = target_logprobs(hidden, weight, targets, impl=impl, chunk_size=chunk_size)
    return -logp, lse, target_is_argmax(hidden, weight, targets, chunk_size)

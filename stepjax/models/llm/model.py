"""Decoder-only LM (pre-norm, residual) for the Llama / Qwen / Step1 family."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from stepjax.models.llm.cache import KVCache, constrain_cache, init_cache
from stepjax.models.llm.config import LLMConfig
from stepjax.nn import MLP, Attention, Embed, linear, make_norm
from stepjax.sharding import constrain

_REMAT = {
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_with_no_batch_dims": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
_ACT = ("act_batch", "act_len", "act_embed")


class DecoderLayer(nnx.Module):
    """``x + attn(norm(x))`` then ``x + mlp(norm(x))``. ``x``: ``[batch, len, hidden]``."""

    def __init__(self, cfg: LLMConfig, *, rngs: nnx.Rngs):
        dtypes = dict(dtype=cfg.compute_dtype, param_dtype=cfg.storage_dtype)
        init = nnx.initializers.normal(cfg.initializer_range)
        self.input_norm = make_norm(cfg.norm, cfg.hidden_size, rngs=rngs, eps=cfg.norm_eps, **dtypes)
        self.attn = Attention(
            cfg.hidden_size,
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.head_dim,
            rngs=rngs,
            position=cfg.position,
            rope_theta=cfg.rope_theta,
            rope_scaling=dict(cfg.rope_scaling) if cfg.rope_scaling else None,
            qkv_bias=cfg.qkv_bias,
            qk_norm=cfg.qk_norm,
            norm_eps=cfg.norm_eps,
            kernel_init=init,
            impl=cfg.attention_impl,
            **dtypes,
        )
        self.post_attn_norm = make_norm(cfg.norm, cfg.hidden_size, rngs=rngs, eps=cfg.norm_eps, **dtypes)
        self.mlp = MLP(cfg.hidden_size, cfg.mlp_dim, rngs=rngs, kind=cfg.mlp_kind, kernel_init=init, **dtypes)

    def __call__(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array) -> jax.Array:
        x = x + self.attn(self.input_norm(x), positions, segment_ids)
        x = x + self.mlp(self.post_attn_norm(x))
        return constrain(x, _ACT)

    def extend(
        self, x: jax.Array, positions: jax.Array, k_cache: jax.Array, v_cache: jax.Array, lengths: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """The layer on new tokens with a KV cache (see ``Attention.extend``): ``(x, k_cache, v_cache)``."""
        out, k_cache, v_cache = self.attn.extend(self.input_norm(x), positions, k_cache, v_cache, lengths)
        x = x + out
        x = x + self.mlp(self.post_attn_norm(x))
        return constrain(x, _ACT), k_cache, v_cache


class DecoderLM(nnx.Module):
    """Token embedding -> ``num_layers`` decoder layers -> final norm -> logits.

    With ``cfg.scan_layers`` the layers' parameters are stacked on a leading ``layers`` axis and run by ``nnx.scan``
    (one compiled layer; faster compiles for deep models). ``cfg.remat`` sets the rematerialisation policy.
    """

    def __init__(self, cfg: LLMConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        dtypes = dict(dtype=cfg.compute_dtype, param_dtype=cfg.storage_dtype)
        self.embed = Embed(
            cfg.vocab_size,
            cfg.hidden_size,
            rngs=rngs,
            embedding_init=nnx.initializers.normal(cfg.initializer_range),
            **dtypes,
        )
        if cfg.scan_layers:

            @nnx.split_rngs(splits=cfg.num_layers)
            @nnx.vmap(in_axes=(0,), out_axes=0)
            def make_layers(layer_rngs: nnx.Rngs) -> DecoderLayer:
                return DecoderLayer(cfg, rngs=layer_rngs)

            self.layers = make_layers(rngs)
        else:
            self.layers = nnx.List([DecoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
        self.final_norm = make_norm(cfg.norm, cfg.hidden_size, rngs=rngs, eps=cfg.norm_eps, **dtypes)
        self.lm_head = (
            None
            if cfg.tie_embeddings
            else linear(
                cfg.hidden_size,
                cfg.vocab_size,
                ("embed", "vocab"),
                rngs=rngs,
                kernel_init=nnx.initializers.normal(cfg.initializer_range),
                **dtypes,
            )
        )

    def _layer_fn(self):
        def run(layer: DecoderLayer, x, positions, segment_ids):
            return layer(x, positions, segment_ids)

        if self.cfg.remat == "none":
            return run
        return nnx.remat(run, policy=_REMAT[self.cfg.remat], prevent_cse=not self.cfg.scan_layers)

    def hidden_states(
        self, tokens: jax.Array, positions: jax.Array | None = None, segment_ids: jax.Array | None = None
    ) -> jax.Array:
        """Final-normed hidden states ``[batch, len, hidden]`` for ``tokens [batch, len]``.

        ``positions`` default to ``arange(len)``; ``segment_ids`` (packed samples) default to one segment per row.
        """
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        if segment_ids is None:
            segment_ids = jnp.ones_like(tokens)
        x = constrain(self.embed(tokens), _ACT)
        run = self._layer_fn()
        if self.cfg.scan_layers:

            @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
            def body(layer: DecoderLayer, carry: jax.Array) -> jax.Array:
                return run(layer, carry, positions, segment_ids)

            x = body(self.layers, x)
        else:
            for layer in self.layers:
                x = run(layer, x, positions, segment_ids)
        return self.final_norm(x)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """Output head: ``[..., hidden]`` -> ``[..., vocab]`` float32."""
        if self.lm_head is None:
            out = self.embed.attend(hidden)
        else:
            out = self.lm_head(hidden)
        return constrain(out.astype(jnp.float32), ("act_batch", "act_len", "act_vocab"))

    def __call__(
        self, tokens: jax.Array, positions: jax.Array | None = None, segment_ids: jax.Array | None = None
    ) -> jax.Array:
        """Logits ``[batch, len, vocab]`` (float32) for ``tokens [batch, len]``."""
        return self.logits(self.hidden_states(tokens, positions, segment_ids))

    # ------------------------------------------------------------------------------------------ KV-cache path

    def init_cache(self, batch: int, max_len: int, dtype: jnp.dtype | None = None) -> KVCache:
        """An empty ``KVCache`` for ``batch`` rows of up to ``max_len`` tokens (prompt + generated), in ``dtype``
        (default: the compute dtype); stacked on a ``layers`` axis when ``cfg.scan_layers``."""
        cfg = self.cfg
        return init_cache(
            cfg.num_layers,
            batch,
            max_len,
            cfg.num_kv_heads,
            cfg.head_dim,
            stacked=cfg.scan_layers,
            dtype=cfg.compute_dtype if dtype is None else dtype,
        )

    def extend(self, tokens: jax.Array, cache: KVCache, num_new: jax.Array | None = None) -> tuple[jax.Array, KVCache]:
        """Runs ``tokens [batch, t]`` at positions ``cache.lengths + arange(t)`` against the cache.

        Their keys/values are written at those slots; ``num_new [batch]`` (default ``t``) says how many of the ``t``
        tokens of each row are real (right padding beyond is written but stays outside ``lengths``, to be
        overwritten later). Returns ``(final-normed hidden [batch, t, hidden], cache)`` with ``lengths`` advanced by
        ``num_new``. Prefill is ``extend`` on an empty cache; a decode step is ``extend`` with ``t = 1``.
        """
        t = tokens.shape[1]
        start = cache.lengths
        positions = start[:, None] + jnp.arange(t, dtype=start.dtype)[None, :]
        lengths = start + (t if num_new is None else num_new.astype(start.dtype))
        x = constrain(self.embed(tokens), _ACT)
        if self.cfg.scan_layers:
            # The stacked cache rides in the carry and each layer updates its slice in place (as scan outputs,
            # the whole cache would be copied into a fresh buffer every step).
            @nnx.scan(in_axes=(0, 0, nnx.Carry), out_axes=nnx.Carry)
            def body(layer: DecoderLayer, index: jax.Array, carry):
                x, k_all, v_all = carry
                x, k, v = layer.extend(x, positions, k_all[index], v_all[index], lengths)
                k_all = jax.lax.dynamic_update_index_in_dim(k_all, k, index, 0)
                v_all = jax.lax.dynamic_update_index_in_dim(v_all, v, index, 0)
                return x, k_all, v_all

            x, k, v = body(self.layers, jnp.arange(self.cfg.num_layers), (x, cache.k, cache.v))
        else:
            ks, vs = [], []
            for layer, k_layer, v_layer in zip(self.layers, cache.k, cache.v, strict=True):
                x, k_layer, v_layer = layer.extend(x, positions, k_layer, v_layer, lengths)
                ks.append(k_layer)
                vs.append(v_layer)
            k, v = tuple(ks), tuple(vs)
        return self.final_norm(x), constrain_cache(KVCache(k=k, v=v, lengths=lengths))

    def prefill(self, tokens: jax.Array, lengths: jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
        """Right-padded prompts ``tokens [batch, t]`` with ``lengths [batch]`` (>= 1) into an empty ``cache``.

        Returns ``(logits [batch, vocab] float32 at each row's last prompt token, cache)``; the output head runs on
        those ``batch`` positions only.
        """
        hidden, cache = self.extend(tokens, cache, lengths)
        last = jnp.take_along_axis(hidden, (lengths - 1)[:, None, None].astype(jnp.int32), axis=1)
        return self.logits(last)[:, 0], cache

    def decode(self, tokens: jax.Array, cache: KVCache, active: jax.Array | None = None) -> tuple[jax.Array, KVCache]:
        """One decode step: ``tokens [batch]`` go to slot ``cache.lengths``; returns ``(logits [batch, vocab], cache)``.

        Rows with ``active`` False (finished rows) do not advance their length.
        """
        num_new = None if active is None else active.astype(jnp.int32)
        hidden, cache = self.extend(tokens[:, None], cache, num_new)
        return self.logits(hidden)[:, 0], cache

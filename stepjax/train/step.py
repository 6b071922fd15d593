"""The train step: one pure function ``(state, batch) -> (state, metrics)``, built once and jitted.

Gradient accumulation is exact: the global batch is split into ``num_micro_batches`` slices; every loss term's
denominator is summed over all slices first, then each slice contributes ``grad(sum_k) / D_k``. The result equals
one big-batch step up to float reassociation, for any mix of token-, sequence- or constant-normalised terms.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from stepjax.objectives.terms import LossTerms
from stepjax.sharding import constrain
from stepjax.train.state import TrainState, merge_model

#: ``loss_fn(model, batch, rng) -> {name: Term}``; the batch is a dict of arrays with a leading batch axis.
LossFn = Callable[[nnx.Module, Mapping[str, jax.Array], jax.Array], LossTerms]
NONFINITE_POLICIES = ("error", "skip")
# optax.global_norm is deprecated in favour of optax.tree.norm (optax >= 0.2.5); keep older optax working.
_global_norm = getattr(getattr(optax, "tree", None), "norm", None) or optax.global_norm


def split_micro_batches(batch: Mapping[str, jax.Array], num_micro_batches: int) -> dict[str, jax.Array]:
    """``[B, ...] -> [n, B / n, ...]``; slice ``j`` holds examples ``j, j + n, ...`` so a batch sharded over
    devices along ``B`` stays sharded along the micro-batch axis."""

    def one(x: jax.Array) -> jax.Array:
        if x.shape[0] % num_micro_batches:
            raise ValueError(f"batch size {x.shape[0]} is not divisible by {num_micro_batches} micro-batches")
        micro = x.shape[0] // num_micro_batches
        return x.reshape(micro, num_micro_batches, *x.shape[1:]).swapaxes(0, 1)

    return {k: one(v) for k, v in batch.items()}


def make_train_step(
    graphdef: nnx.GraphDef,
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    *,
    loss_weights: Mapping[str, float],
    num_micro_batches: int = 1,
    schedule: optax.Schedule | None = None,
) -> Callable[[TrainState, Mapping[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]:
    """Builds the pure train step (not yet jitted; see ``jit_train_step``).

    Args:
      graphdef: the model's static structure from ``nnx.split``.
      loss_fn: returns named ``Term``s; terms named in ``loss_weights`` form the loss, all are logged.
      tx: optax optimizer.
      loss_weights: ``{term name: weight}``; the loss is ``sum_k w_k * total_k / denominator_k``.
      num_micro_batches: gradient-accumulation slices of the global batch.
      schedule: learning-rate schedule, only for logging ``lr``.
    Returns:
      ``step(state, batch) -> (new_state, metrics)``. Metrics: ``loss``, every term's value, ``grad_norm``,
      ``param_norm``, ``lr``, ``nonfinite`` (1.0 when the update was withheld because loss or grads were not finite).
    """
    weights = dict(loss_weights)

    def terms_of(params, extra, batch, rng) -> LossTerms:
        terms = loss_fn(merge_model(graphdef, params, extra), batch, rng)
        missing = sorted(set(weights) - set(terms))
        if missing:
            raise KeyError(
                f"loss_weights name terms {missing} that the loss does not return; it returns {sorted(terms)}"
            )
        return terms

    def weighted(terms: LossTerms, denominators: Mapping[str, jax.Array]) -> jax.Array:
        return sum(w * terms[k].total / jnp.maximum(denominators[k], 1e-12) for k, w in weights.items())

    def step(state: TrainState, batch: Mapping[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        micro = split_micro_batches(batch, num_micro_batches)
        rngs = jax.random.split(rng, num_micro_batches)

        # Pass 1: denominators of every term over the whole batch. They depend only on the batch, so JAX's
        # dead-code elimination drops the forward pass here; what remains is mask arithmetic.
        # The model state rides in the loop carry rather than being closed over: nnx transforms inside the model
        # (nnx.scan over stacked layers) reject variables holding tracers of an outer trace level.
        def denominators_of(model_state, xs):
            mb, r = xs
            terms = terms_of(*model_state, mb, r)
            return model_state, {k: t.denominator for k, t in terms.items()}

        _, dens = jax.lax.scan(denominators_of, (state.params, state.extra), (micro, rngs))
        dens = jax.tree.map(lambda d: d.sum(0), dens)

        # Pass 2: accumulate gradients of sum_k w_k total_k / D_k over micro-batches.
        def micro_step(carry, xs):
            grads_acc, totals_acc, (params, extra) = carry
            mb, r = xs

            def objective(params):
                terms = terms_of(params, extra, mb, r)
                return weighted(terms, dens), {k: t.total for k, t in terms.items()}

            (_, totals), grads = jax.value_and_grad(objective, has_aux=True)(params)
            grads_acc = jax.tree.map(jnp.add, grads_acc, grads)
            totals_acc = jax.tree.map(jnp.add, totals_acc, totals)
            return (grads_acc, totals_acc, (params, extra)), None

        zero_grads = jax.tree.map(jnp.zeros_like, state.params)
        zero_totals = jax.tree.map(lambda d: jnp.zeros((), jnp.float32), dens)
        init = (zero_grads, zero_totals, (state.params, state.extra))
        if num_micro_batches == 1:
            (grads, totals, _), _ = micro_step(init, jax.tree.map(lambda x: x[0], (micro, rngs)))
        else:
            (grads, totals, _), _ = jax.lax.scan(micro_step, init, (micro, rngs))

        loss = sum(w * totals[k] / jnp.maximum(dens[k], 1e-12) for k, w in weights.items())
        grad_norm = _global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        # Never let a non-finite update reach the parameters (or, later, a checkpoint). A cond rather than a
        # per-leaf where(finite, new, old): the where made XLA recompute the moments inside the parameter update and
        # copy every donated moment buffer first (~5% of a CPU step).
        def apply_update(_):
            updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
            return optax.apply_updates(state.params, updates), new_opt_state

        new_params, new_opt_state = jax.lax.cond(finite, apply_update, lambda _: (state.params, state.opt_state), None)
        new_state = state.replace(step=state.step + 1, params=new_params, opt_state=new_opt_state)
        metrics = {k: totals[k] / jnp.maximum(dens[k], 1e-12) for k in totals}
        metrics.update(
            loss=loss,
            grad_norm=grad_norm,
            param_norm=_global_norm(new_state.params),
            nonfinite=1.0 - finite.astype(jnp.float32),
        )
        if schedule is not None:
            metrics["lr"] = jnp.asarray(schedule(state.step), jnp.float32)
        return new_state, metrics

    return step


def jit_train_step(
    step: Callable, state: TrainState, *, batch_sharding: Any = None, donate: bool = True
) -> Callable[[TrainState, Mapping[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]:
    """``jax.jit`` with the state's current shardings pinned on output (no resharding between steps)."""
    state_sh = jax.tree.map(lambda x: x.sharding, state)
    in_sh = (state_sh, batch_sharding) if batch_sharding is not None else None
    return jax.jit(
        step,
        in_shardings=in_sh,
        out_shardings=(state_sh, None),
        donate_argnums=(0,) if donate else (),
    )


def lm_loss_fn(aggregation: str = "token_mean", z_loss: float = 0.0, *, chunk_size: int = 4096) -> LossFn:
    """Loss function for next-token training on batches with ``inputs``, ``targets``, ``loss_mask``, ``positions``,
    ``segment_ids`` (all ``[batch, len]``).

    A ``DecoderLM`` whose ``cfg.logprob_impl`` is not ``"full"`` never forms ``[batch, len, vocab]`` logits: the
    terms come from ``stepjax.kernels.fused_logprob`` on the final hidden states (``stepjax.train.lm_head``; vocabulary
    chunks of ``chunk_size`` columns). Same terms and values (``lm``, ``accuracy``, ``z_loss``) up to float
    reassociation.
    """
    from stepjax.objectives.lm import lm_loss, lm_loss_terms

    def fn(model: nnx.Module, batch: Mapping[str, jax.Array], rng: jax.Array) -> LossTerms:
        del rng
        inputs, positions, segment_ids = batch["inputs"], batch.get("positions"), batch.get("segment_ids")
        impl = _logprob_impl(model)
        if impl != "full":
            from stepjax.train.lm_head import fused_head_stats

            hidden = model.hidden_states(inputs, positions, segment_ids)
            nll, lse, correct = fused_head_stats(model, hidden, batch["targets"], impl=impl, chunk_size=chunk_size)
            return lm_loss_terms(
                nll,
                lse,
                correct,
                batch["loss_mask"],
                segment_ids=segment_ids,
                aggregation=aggregation,
                z_loss=z_loss,
            )
        logits = _lm_logits(model, inputs, positions, segment_ids)
        return lm_loss(
            logits,
            batch["targets"],
            batch["loss_mask"],
            segment_ids=segment_ids,
            aggregation=aggregation,
            z_loss=z_loss,
        )

    return fn


def _logprob_impl(model: nnx.Module) -> str:
    """``cfg.logprob_impl`` of a ``DecoderLM``; ``"full"`` for any other model (it only offers logits)."""
    from stepjax.models.llm import DecoderLM

    return model.cfg.logprob_impl if isinstance(model, DecoderLM) else "full"


def _lm_logits(model: nnx.Module, tokens: jax.Array, positions: jax.Array | None, segment_ids: jax.Array | None):
    """``model(tokens, positions, segment_ids)``; for a ``DecoderLM`` the same logits with the output head's
    backward pass laid out for speed (see ``_output_head``)."""
    from stepjax.models.llm import DecoderLM

    if not isinstance(model, DecoderLM) or (model.lm_head is not None and model.lm_head.bias is not None):
        return model(tokens, positions, segment_ids)
    hidden = model.hidden_states(tokens, positions, segment_ids)
    dtype = model.cfg.compute_dtype
    kernel = model.embed.embedding[...].T if model.lm_head is None else model.lm_head.kernel[...]
    logits = _output_head(hidden.astype(dtype), kernel.astype(dtype))
    return constrain(logits.astype(jnp.float32), ("act_batch", "act_len", "act_vocab"))


@jax.custom_vjp
def _output_head(hidden: jax.Array, kernel: jax.Array) -> jax.Array:
    """``hidden [b, t, d] @ kernel [d, vocab]`` (what ``DecoderLM.logits`` computes), with a hand-written VJP.

    The kernel gradient contracts over tokens, the leading axis of both operands. Left to autodiff, XLA CPU
    transposes the huge ``[b*t, vocab]`` logits cotangent in a strided loop and runs the matmul outside its fast
    GEMM library; transposing the small ``hidden`` instead (the barrier keeps XLA from folding it back) gives a
    plain row-major GEMM. Same products and sums, so the values match autodiff up to float reassociation.
    """
    return jnp.einsum("btd,dv->btv", hidden, kernel)


def _output_head_fwd(hidden, kernel):
    return _output_head(hidden, kernel), (hidden, kernel)


def _output_head_bwd(residuals, g):
    hidden, kernel = residuals
    d_hidden = jnp.einsum("btv,dv->btd", g, kernel)
    hidden_t = jax.lax.optimization_barrier(jnp.transpose(hidden, (2, 0, 1)))  # [d, b, t], materialised
    d_kernel = jnp.einsum("dbt,btv->dv", hidden_t, g)
    return d_hidden.astype(hidden.dtype), d_kernel.astype(kernel.dtype)


_output_head.defvjp(_output_head_fwd, _output_head_bwd)


def train_metrics_to_host(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in jax.device_get(dict(metrics)).items()}

"""Exactness under micro-batching: for every aggregation mode of the new objectives (packed rows included), summing
the terms of micro-batches (totals over the summed denominators) equals the big batch in value and gradient; and
``make_train_step`` with 4 micro-batches takes the same optimizer step as with 1."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from stepjax.objectives.dpo import dpo_loss, dpo_loss_weights, split_pairs, stack_pairs
from stepjax.objectives.grpo import grpo_loss
from stepjax.objectives.lm import token_log_probs
from stepjax.objectives.ppo import ppo_policy_loss, value_loss
from stepjax.objectives.sft import sft_loss
from stepjax.train import create_train_state, make_optimizer, make_train_step

N, L, MICRO = 6, 10, 3
MODES = ("token_mean", "sequence_mean", "sequence_sum", "constant")


def _batch(seed=0):
    """Rows with 1-3 packed samples (segment ids), a few masked tokens, per-token advantages/values/returns."""
    rng = np.random.default_rng(seed)
    seg = np.zeros((N, L), np.int32)
    for b in range(N):
        cuts = sorted(rng.choice(np.arange(2, L - 1), size=int(rng.integers(0, 3)), replace=False))
        for s, (a, z) in enumerate(zip([0, *cuts], [*cuts, L - 1], strict=True), start=1):
            seg[b, a:z] = s
    mask = ((seg > 0) & (rng.random((N, L)) < 0.85)).astype(np.float32)
    logp = -rng.uniform(0.1, 2.0, (N, L)).astype(np.float32)
    f = lambda s: (logp + s).astype(np.float32)
    return {
        "log_probs": logp,
        "old": f(rng.choice([-0.4, 0.0, 0.4], size=(N, L))),
        "ref": f(rng.normal(0, 0.3, (N, L))),
        "adv": rng.normal(size=(N, L)).astype(np.float32),
        "entropy": rng.uniform(0.5, 2.0, (N, L)).astype(np.float32),
        "values": rng.normal(size=(N, L)).astype(np.float32),
        "returns": rng.integers(0, 2, (N, L)).astype(np.float32),
        "mask": mask,
        "seg": seg,
    }


def _check_split(loss_fn, batch, differentiable, loss_names):
    """``loss_fn(batch) -> terms``; compares the big batch with MICRO interleaved slices accumulated exactly."""

    def value_of(x, b, dens=None):
        terms = loss_fn({**b, differentiable: x})
        dens = dens or {k: terms[k].denominator for k in loss_names}
        return sum(terms[k].total / dens[k] for k in loss_names), terms

    (want, _), want_grad = jax.value_and_grad(value_of, has_aux=True)(batch[differentiable], batch)
    slices = [jax.tree.map(lambda x, j=j: x[j::MICRO], batch) for j in range(MICRO)]
    dens = {k: sum(loss_fn(s)[k].denominator for s in slices) for k in loss_names}
    got, grad = 0.0, np.zeros_like(batch[differentiable])
    for j, s in enumerate(slices):
        v, g = jax.value_and_grad(lambda x, s=s: value_of(x, s, dens)[0])(s[differentiable])
        got += float(v)
        grad[j::MICRO] = np.asarray(g)
    assert abs(got - float(want)) < 1e-6 * max(1.0, abs(float(want))), (got, float(want))  # fp32 reassociation
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("mode", [*MODES, "sum"])
def test_sft(mode):
    fn = lambda b: sft_loss(b["log_probs"], b["mask"], segment_ids=b["seg"], aggregation=mode, constant=L)
    _check_split(fn, _batch(), "log_probs", ["sft"])


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("mode", MODES)
def test_grpo(mode, level):
    def fn(b):
        return grpo_loss(
            b["log_probs"], b["adv"], b["mask"], old_log_probs=b["old"], ref_log_probs=b["ref"], beta=0.04,
            entropy=b["entropy"], entropy_coef=0.01, epsilon_high=0.28, importance_sampling_level=level,
            aggregation=mode, max_completion_length=L, segment_ids=b["seg"],
        )  # fmt: skip

    _check_split(fn, _batch(1), "log_probs", ["grpo"])


@pytest.mark.parametrize("mode", MODES)
def test_ppo_policy_and_value(mode):
    def policy(b):
        return ppo_policy_loss(
            b["log_probs"], b["old"], b["adv"], b["mask"], dual_clip=3.0, ref_log_probs=b["ref"], kl_coef=0.05,
            entropy=b["entropy"], entropy_coef=0.01, aggregation=mode, segment_ids=b["seg"], constant=L,
        )  # fmt: skip

    def value(b):
        return value_loss(b["values"], b["old"], b["returns"], b["mask"], aggregation=mode, segment_ids=b["seg"])

    _check_split(policy, _batch(2), "log_probs", ["ppo"])
    _check_split(value, _batch(2), "values", ["value"])


def test_dpo_mixture():
    batch = _batch(3)
    rng = np.random.default_rng(3)
    batch["rejected"] = (batch["log_probs"][::-1] - 0.3).copy()
    batch["rejected_mask"] = batch["mask"][::-1].copy()
    batch["ref_rejected"] = rng.normal(-8, 2, size=N).astype(np.float32)
    batch["ref_chosen"] = rng.normal(-8, 2, size=N).astype(np.float32)
    types = ["sigmoid", "ipo", "sft", "apo_down", "nca_pair", "discopop"]

    def fn(b):
        return dpo_loss(
            b["log_probs"], b["rejected"], b["mask"], b["rejected_mask"], b["ref_chosen"], b["ref_rejected"],
            beta=0.2, loss_type=types, loss_weights=[1.0, 0.5, 0.2, 0.3, 0.1, 0.4],
        )  # fmt: skip

    _check_split(fn, batch, "log_probs", list(dpo_loss_weights(types)))


# ------------------------------------------------------------------------------- through make_train_step

V = 32


class ToyLM(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, dim: int = 16):
        self.tok = nnx.Embed(V, dim, rngs=rngs)
        self.pos = nnx.Embed(L, dim, rngs=rngs)
        self.out = nnx.Linear(dim, V, rngs=rngs)

    def __call__(self, tokens, positions):
        return self.out(jnp.tanh(self.tok(tokens) + self.pos(positions)))


@functools.cache
def _state():
    tx, _ = make_optimizer({"name": "sgd", "learning_rate": 1.0}, total_steps=10)
    graphdef, state = create_train_state(lambda r: ToyLM(r), tx, seed=0)
    return graphdef, state, tx


def _token_batch(seed, rows=8):
    b = _batch(seed)
    rng = np.random.default_rng(seed)
    reps = -(-rows // N)
    b = {k: np.concatenate([v] * reps)[:rows] for k, v in b.items()}
    b["inputs"] = rng.integers(0, V, (rows, L)).astype(np.int32)
    b["targets"] = rng.integers(0, V, (rows, L)).astype(np.int32)
    b["positions"] = np.broadcast_to(np.arange(L, dtype=np.int32), (rows, L)).copy()
    return b


def _same_step(loss_fn, batch, weights):
    graphdef, state, tx = _state()
    results = []
    for n in (1, 4):
        step = make_train_step(graphdef, loss_fn, tx, loss_weights=weights, num_micro_batches=n)
        new_state, metrics = jax.jit(step)(state, batch)
        results.append((new_state.params, float(metrics["loss"])))
    (p1, l1), (p4, l4) = results
    assert abs(l1 - l4) < 1e-6
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p4), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    moved = max(
        float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(state.params), strict=True)
    )
    assert moved > 1e-4  # the step did something


def test_train_step_gspo_packed_sequence_mean():
    def loss_fn(model, b, rng):
        lp = token_log_probs(model(b["inputs"], b["positions"]), b["targets"])
        return grpo_loss(
            lp, b["adv"], b["mask"], old_log_probs=b["old"], ref_log_probs=b["ref"], beta=0.04,
            importance_sampling_level="sequence", aggregation="sequence_mean", segment_ids=b["seg"],
        )  # fmt: skip

    _same_step(loss_fn, _token_batch(4), {"grpo": 1.0})


def test_train_step_dpo_pairs():
    def loss_fn(model, b, rng):
        tokens, targets = stack_pairs(b["inputs"], b["inputs"][:, ::-1]), stack_pairs(b["targets"], b["targets"])
        lp = token_log_probs(model(tokens, stack_pairs(b["positions"], b["positions"])), targets)
        chosen, rejected = split_pairs(lp)
        return dpo_loss(
            chosen, rejected, b["mask"], b["mask"], b["ref"], b["old"], beta=0.5, loss_type=["sigmoid", "sft"]
        )

    _same_step(loss_fn, _token_batch(5), dpo_loss_weights(["sigmoid", "sft"]))

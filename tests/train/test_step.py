"""make_train_step: exact gradient accumulation against a directly written full-batch loss, and withheld updates."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from stepjax.models.llm import DecoderLM, llm_preset
from stepjax.train import create_train_state, lm_loss_fn, make_optimizer, make_train_step, split_micro_batches

B, L, V = 8, 16, 64


class ToyLM(nnx.Module):
    """Next-token logits from token and position embeddings: per-token, so compiles in a fraction of a second."""

    def __init__(self, rngs: nnx.Rngs, dim: int = 16):
        self.tok = nnx.Embed(V, dim, rngs=rngs)
        self.pos = nnx.Embed(L, dim, rngs=rngs)
        self.out = nnx.Linear(dim, V, rngs=rngs)

    def __call__(self, tokens, positions=None, segment_ids=None):
        del segment_ids  # per-token model: nothing crosses sample boundaries
        return self.out(jnp.tanh(self.tok(tokens) + self.pos(positions)))


@functools.cache
def _setup(model: str = "toy"):
    if model == "toy":
        make = lambda r: ToyLM(r)
    else:
        cfg = llm_preset("tiny", vocab_size=V, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, mlp_dim=64)
        make = lambda r: DecoderLM(cfg, rngs=r)
    tx, _ = make_optimizer({"name": "sgd", "learning_rate": 1.0}, total_steps=10)  # new params = params - grads
    graphdef, state = create_train_state(make, tx, seed=0)
    return graphdef, state, tx


def _batch(packed: bool, seed: int = 0) -> dict[str, np.ndarray]:
    """Rows of different lengths (2..16 real tokens); packed rows hold 1-3 samples with restarting positions."""
    rng = np.random.default_rng(seed)
    inputs = np.zeros((B, L), np.int32)
    targets = np.zeros((B, L), np.int32)
    mask = np.zeros((B, L), np.float32)
    positions = np.zeros((B, L), np.int32)
    segments = np.zeros((B, L), np.int32)
    for b in range(B):
        used = int(rng.integers(3, L + 1))
        cuts = (
            sorted(
                rng.choice(np.arange(2, used - 1), size=min(int(rng.integers(0, 3)), max(used - 3, 0)), replace=False)
            )
            if packed and used > 4
            else []
        )
        for seg, (start, stop) in enumerate(zip([0, *cuts], [*cuts, used], strict=True), start=1):
            tokens = rng.integers(1, V, size=stop - start + 1)
            inputs[b, start:stop] = tokens[:-1]
            targets[b, start:stop] = tokens[1:]
            mask[b, start:stop] = (rng.random(stop - start) < 0.8).astype(np.float32)
            mask[b, start] = 1.0  # every sample trains at least one token
            positions[b, start:stop] = np.arange(stop - start)
            segments[b, start:stop] = seg
    batch = {"inputs": inputs, "targets": targets, "loss_mask": mask, "positions": positions}
    if packed:
        batch["segment_ids"] = segments
    return batch


def _reference_loss(params, graphdef, extra, batch, aggregation):
    """The full-batch loss written out directly: no micro-batches, no (sum, denominator) terms."""
    model = nnx.merge(graphdef, params, extra)
    logits = model(batch["inputs"], batch["positions"], batch.get("segment_ids"))
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, batch["targets"][..., None], axis=-1)[..., 0]
    mask = batch["loss_mask"]
    if aggregation == "token_mean":
        return (nll * mask).sum() / mask.sum()
    segments = batch.get("segment_ids", (mask > 0).astype(np.int32))  # unpacked: one sequence per row
    means = []
    for b in range(B):
        for s in np.unique(segments[b]):
            m = mask[b] * (segments[b] == s)
            if s > 0 and m.sum() > 0:
                means.append((nll[b] * m).sum() / m.sum())
    return sum(means) / len(means)


def _check_accumulation(model: str, aggregation: str, packed: bool, micro: tuple[int, ...]) -> None:
    graphdef, state, tx = _setup(model)
    batch = _batch(packed)
    reference = jax.jit(jax.value_and_grad(lambda p: _reference_loss(p, graphdef, state.extra, batch, aggregation)))
    ref_loss, ref_grads = reference(state.params)
    ref_params = jax.tree.map(lambda p, g: p - g, state.params, ref_grads)
    results = {}
    for n in micro:
        step = make_train_step(graphdef, lm_loss_fn(aggregation), tx, loss_weights={"lm": 1.0}, num_micro_batches=n)
        new_state, metrics = jax.jit(step)(state, batch)
        assert int(new_state.step) == 1 and float(metrics["nonfinite"]) == 0.0
        assert abs(float(metrics["loss"]) - float(ref_loss)) < 1e-6, n
        for got, want in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(ref_params), strict=True):
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=f"{n} micro-batches")
        results[n] = new_state, metrics
    (s1, m1), (s8, m8) = results[1], results[8]
    for key in ("loss", "lm", "accuracy", "grad_norm"):
        assert abs(float(m1[key]) - float(m8[key])) < 1e-6, key
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s8.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("aggregation", "packed", "micro"),
    [
        ("token_mean", True, (1, 2, 8)),
        ("sequence_mean", True, (1, 2, 8)),
        ("sequence_mean", False, (1, 8)),  # unpacked rows: a row is the sequence
    ],
)
def test_micro_batches_match_full_batch_reference(aggregation, packed, micro):
    _check_accumulation("toy", aggregation, packed, micro)


def test_micro_batches_match_reference_decoder_lm():
    # The real decoder (attention within packed samples): 8 x 1 vs 1 x 8, packed rows, sequence-mean.
    _check_accumulation("decoder", "sequence_mean", True, (1, 8))


def test_nonfinite_update_is_withheld():
    graphdef, state, tx = _setup()
    batch = _batch(packed=True, seed=1)
    batch["loss_mask"][3, 2] = np.nan
    step = make_train_step(graphdef, lm_loss_fn(), tx, loss_weights={"lm": 1.0}, num_micro_batches=2)
    new_state, metrics = jax.jit(step)(state, batch)
    assert float(metrics["nonfinite"]) == 1.0 and not np.isfinite(float(metrics["loss"]))
    assert int(new_state.step) == 1
    for a, b in zip(
        jax.tree.leaves((new_state.params, new_state.opt_state)),
        jax.tree.leaves((state.params, state.opt_state)),
        strict=True,
    ):
        assert np.array_equal(a, b)


def test_split_micro_batches_interleaves_examples():
    x = np.arange(8 * 3).reshape(8, 3)
    micro = split_micro_batches({"x": x}, 4)["x"]
    assert micro.shape == (4, 2, 3)
    np.testing.assert_array_equal(micro[1], x[[1, 5]])  # slice j holds examples j, j + n, ...
    with pytest.raises(ValueError, match="batch size 8 is not divisible by 3 micro-batches"):
        split_micro_batches({"x": x}, 3)

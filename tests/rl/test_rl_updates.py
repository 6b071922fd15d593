"""The RL step's optimizer steps: one scanned program equals separate per-mini-batch steps, gradient accumulation
over token-budget slices equals the unsplit step, and the entropy metric adds no gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stepjax.models.llm import DecoderLM, llm_preset
from stepjax.rl.trainer import (
    RLConfig,
    _minibatches,
    make_minibatch_updates,
    micro_batches_for,
    policy_loss_fn,
)
from stepjax.train import create_train_state, make_optimizer
from stepjax.train.state import merge_model
from stepjax.train.step import make_train_step

ROWS, LEN = 8, 12


def _state(optimizer="adamw"):
    cfg = llm_preset("tiny", vocab_size=40, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, mlp_dim=64)
    opt = dict(name=optimizer, learning_rate=1e-2, schedule="constant", b1=0.9, b2=0.95, grad_clip_norm=1.0)
    tx, schedule = make_optimizer(opt, total_steps=10)
    graphdef, state = create_train_state(lambda rngs: DecoderLM(cfg, rngs=rngs), tx, seed=0)
    return graphdef, state, tx, schedule


def _rows(seed=0, per_token_advantages=False):
    """Rollout-like rows: a prompt, then a completion of random length under the loss mask (PPO's advantages are
    per token, GRPO's per row)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 40, (ROWS, LEN + 1)).astype(np.int32)
    mask = np.zeros((ROWS, LEN), np.float32)
    for r in range(ROWS):
        start = int(rng.integers(1, 4))
        mask[r, start : start + int(rng.integers(2, LEN - start + 1))] = 1.0
    return {
        "inputs": jnp.asarray(tokens[:, :-1]),
        "targets": jnp.asarray(tokens[:, 1:]),
        "positions": jnp.broadcast_to(jnp.arange(LEN, dtype=jnp.int32), (ROWS, LEN)),
        "loss_mask": jnp.asarray(mask),
        "old_logprobs": jnp.asarray(-rng.uniform(2.0, 5.0, (ROWS, LEN)).astype(np.float32) * mask),
        "advantages": jnp.asarray(rng.standard_normal((ROWS, LEN) if per_token_advantages else ROWS), jnp.float32),
    }


def _max_diff(a, b) -> float:
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def test_micro_batches_for_picks_the_fewest_slices_within_the_budget():
    assert micro_batches_for(64, 79, 0) == 1  # no split
    assert micro_batches_for(64, 79, 10_000) == 1  # 5056 tokens fit
    assert micro_batches_for(64, 79, 1024) == 8  # 8 rows = 632 tokens; 16 rows = 1264 would not fit
    assert micro_batches_for(12, 10, 45) == 3  # 4 rows = 40 tokens (5 rows would fit, but 5 does not divide 12)
    assert micro_batches_for(6, 100, 50) == 6  # even one row is over: one row per slice


def test_micro_batch_tokens_is_validated():
    with pytest.raises(ValueError, match="micro_batch_tokens"):
        RLConfig(micro_batch_tokens=-1)


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_scanned_updates_equal_separate_steps(algorithm):
    graphdef, state, tx, schedule = _state()
    cfg = RLConfig(algorithm=algorithm, policy_minibatches=2, policy_epochs=2)
    weights = {algorithm: 1.0}
    batch = _rows(per_token_advantages=algorithm == "ppo")
    order = np.stack(_minibatches(ROWS, 2, 2, np.random.default_rng(0)))
    assert order.shape == (4, ROWS // 2)

    step = jax.jit(make_train_step(graphdef, policy_loss_fn(cfg), tx, loss_weights=weights, schedule=schedule))
    loop_state, loop_metrics = state, []
    for idx in order:
        loop_state, m = step(loop_state, {k: v[idx] for k, v in batch.items()})
        loop_metrics.append(m)

    updates = make_minibatch_updates(
        graphdef, policy_loss_fn(cfg), tx, loss_weights=weights, schedule=schedule, micro_batch_tokens=0
    )
    scan_state, scan_metrics = updates(jax.tree.map(jnp.copy, state), batch, order)
    assert int(scan_state.step) == int(loop_state.step) == 4
    assert _max_diff(scan_state.params, loop_state.params) < 1e-6
    assert _max_diff(scan_state.opt_state, loop_state.opt_state) < 1e-6
    for name in ("loss", "grad_norm", "nonfinite", "lr", algorithm):
        np.testing.assert_allclose(scan_metrics[name], [float(m[name]) for m in loop_metrics], rtol=1e-5, atol=1e-7)
    assert float(loop_metrics[-1]["loss"]) != float(loop_metrics[0]["loss"])  # the steps did move the policy


def test_token_budget_slices_give_the_unsplit_update():
    # SGD: the update is the gradient itself (Adam's first step is ~lr * sign(g): blind to a wrong gradient scale).
    graphdef, state, tx, _ = _state("sgd")
    cfg = RLConfig(algorithm="grpo", aggregation="token_mean")
    batch = _rows(1)
    order = np.arange(ROWS)[None]  # one step on all rows
    results = {}
    for budget in (0, 2 * LEN):  # unsplit; 4 slices of 2 rows
        updates = make_minibatch_updates(
            graphdef, policy_loss_fn(cfg), tx, loss_weights={"grpo": 1.0}, micro_batch_tokens=budget
        )
        results[budget] = updates(jax.tree.map(jnp.copy, state), batch, order)
    (whole, m_whole), (sliced, m_sliced) = results[0], results[2 * LEN]
    # Token-mean over slices of unequal token counts is exact only because denominators are summed first.
    assert len({float(batch["loss_mask"][r : r + 2].sum()) for r in range(0, ROWS, 2)}) > 1
    np.testing.assert_allclose(m_sliced["loss"], m_whole["loss"], rtol=1e-6)
    np.testing.assert_allclose(m_sliced["grad_norm"], m_whole["grad_norm"], rtol=1e-5)
    assert _max_diff(sliced.params, whole.params) < 1e-8
    assert _max_diff(sliced.params, state.params) > 1e-5  # and the update is not trivially zero


def test_entropy_metric_adds_no_gradient():
    graphdef, state, _, _ = _state()
    batch = _rows(2)

    def grads(entropy_metric: bool):
        fn = policy_loss_fn(RLConfig(algorithm="grpo", entropy_metric=entropy_metric))

        def loss(params):
            terms = fn(merge_model(graphdef, params, state.extra), batch, None)
            return terms["grpo"].total / terms["grpo"].denominator, terms

        return jax.grad(loss, has_aux=True)(state.params)

    with_entropy, terms = grads(True)
    without, _ = grads(False)
    assert "entropy" in terms and float(terms["entropy"].total) > 0
    assert _max_diff(with_entropy, without) == 0.0

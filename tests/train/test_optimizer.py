"""make_schedule / make_optimizer: schedule values from their formulas, decay masks, clipping, named errors."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from stepjax.train import make_optimizer, make_schedule


def test_warmup_cosine_follows_its_formula():
    lr, warmup, total, floor = 0.1, 10, 110, 0.1
    sched = make_schedule(
        {"learning_rate": lr, "schedule": "warmup_cosine", "warmup_steps": warmup, "end_lr_ratio": floor}, total
    )
    for step in (0, 5, 10, 35, 60, 110, 200):
        if step < warmup:
            want = lr * step / warmup
        else:
            t = min(step - warmup, total - warmup) / (total - warmup)
            want = lr * floor + (lr - lr * floor) * 0.5 * (1 + math.cos(math.pi * t))
        assert float(sched(step)) == pytest.approx(want, rel=1e-5, abs=1e-8), step


def test_warmup_linear_and_constant():
    lin = make_schedule({"learning_rate": 1.0, "schedule": "warmup_linear", "warmup_steps": 4}, 14)
    assert [round(float(lin(s)), 6) for s in (0, 2, 4, 9, 14, 20)] == [0.0, 0.5, 1.0, 0.5, 0.0, 0.0]
    const = make_schedule({"learning_rate": 0.3, "schedule": "warmup_constant", "warmup_steps": 3}, 100)
    assert [round(float(const(s)), 6) for s in (0, 1, 3, 50)] == [0.0, 0.1, 0.3, 0.3]
    assert float(make_schedule({"learning_rate": 0.2}, 10)(7)) == pytest.approx(0.2)


def test_adamw_decays_matrices_only():
    tx, _ = make_optimizer({"name": "adamw", "learning_rate": 0.1, "weight_decay": 0.5}, 10)
    params = {"kernel": jnp.ones((2, 3)), "scale": jnp.ones((3,))}
    zeros = {k: jnp.zeros_like(v) for k, v in params.items()}
    updates, _ = tx.update(zeros, tx.init(params), params)
    # Zero gradients: Adam's part is 0, so the update is -lr * wd * p on decayed leaves only.
    np.testing.assert_allclose(updates["kernel"], -0.1 * 0.5 * np.ones((2, 3)), rtol=1e-6)
    np.testing.assert_array_equal(updates["scale"], np.zeros(3))


def test_grad_clip_bounds_the_update_norm():
    tx, _ = make_optimizer({"name": "sgd", "learning_rate": 1.0, "grad_clip_norm": 2.0}, 10)
    params = {"w": jnp.zeros((4,))}
    grads = {"w": jnp.array([30.0, 40.0, 0.0, 0.0])}  # norm 50
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], [-1.2, -1.6, 0.0, 0.0], rtol=1e-6)
    assert float(optax.tree.norm(updates)) == pytest.approx(2.0)


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd", "lion", "adafactor"])
def test_every_optimizer_takes_a_descent_step(name):
    tx, _ = make_optimizer({"name": name, "learning_rate": 0.01, "momentum": 0.9}, 10)
    params = {"w": jnp.full((4, 4), 2.0)}
    loss = lambda p: jnp.sum(p["w"] ** 2)
    grads = {"w": 2 * params["w"]}
    updates, _ = tx.update(grads, tx.init(params), params)
    assert float(loss(optax.apply_updates(params, updates))) < float(loss(params))


def test_unknown_names_are_named():
    with pytest.raises(ValueError, match=r"optimizer.name 'adamx' is not one of \('adamw'"):
        make_optimizer({"name": "adamx", "learning_rate": 0.1}, 10)
    with pytest.raises(ValueError, match=r"optimizer.schedule 'cos' is not one of"):
        make_schedule({"learning_rate": 0.1, "schedule": "cos"}, 10)

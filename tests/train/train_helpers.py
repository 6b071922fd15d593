"""A tiny regression model, its loss and a deterministic resumable iterator for the loop/checkpoint tests.

Imported by the tests and by ``loop_worker.py`` (run as a subprocess), so both build exactly the same run.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from stepjax.objectives import Term
from stepjax.train import create_train_state, jit_train_step, make_optimizer, make_train_step

IN, HIDDEN, BATCH = 4, 8, 8


class TinyRegressor(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, hidden: int = HIDDEN):
        self.l1 = nnx.Linear(IN, hidden, rngs=rngs)
        self.l2 = nnx.Linear(hidden, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.l2(jnp.tanh(self.l1(x)))[..., 0]


def regression_loss(model, batch, rng):
    """Masked MSE; the step RNG adds a little noise (so a resume must restore the RNG); a ``poison`` flag in the
    batch turns the loss into NaN."""
    pred = model(batch["x"]) + 1e-3 * jax.random.normal(rng, batch["y"].shape)
    err = jnp.square(pred - batch["y"]) * batch["mask"]
    total = err.sum() + jnp.where(batch["poison"].sum() > 0, jnp.nan, 0.0)
    return {"mse": Term(total, batch["mask"].sum())}


class ArrayIterator:
    """Batch ``i`` is a pure function of ``(seed, i)``; the state is ``{"index": i}`` (batches already served)."""

    def __init__(self, seed: int = 0, poison_steps: tuple[int, ...] = ()):
        self.seed, self.index, self.poison_steps = seed, 0, tuple(poison_steps)
        self.w = np.random.default_rng(seed).normal(size=(IN,)).astype(np.float32)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.index])
        x = rng.normal(size=(BATCH, IN)).astype(np.float32)
        y = (np.sin(x @ self.w) + 0.1 * rng.normal(size=BATCH)).astype(np.float32)
        mask = (rng.random(BATCH) < 0.9).astype(np.float32)
        self.index += 1
        # Batch i trains step i + 1; poison it when that step is listed.
        poison = np.full((BATCH,), float(self.index in self.poison_steps), np.float32)
        return {"x": x, "y": y, "mask": mask, "poison": poison}

    def get_state(self) -> dict:
        return {"index": self.index, "seed": self.seed}

    def set_state(self, state: dict) -> None:
        if state["seed"] != self.seed:
            raise ValueError(f"iterator state of seed {state['seed']} given to the iterator of seed {self.seed}")
        self.index = int(state["index"])


SCHEDULE_STEPS = 20  # fixed, so every test shares one compiled step


@functools.cache
def _template(seed: int, hidden: int, donate: bool):
    tx, schedule = make_optimizer(
        {
            "name": "adamw",
            "learning_rate": 0.05,
            "schedule": "warmup_cosine",
            "warmup_steps": 2,
            "weight_decay": 0.01,
            "grad_clip_norm": 1.0,
        },
        SCHEDULE_STEPS,
    )
    graphdef, state = create_train_state(lambda r: TinyRegressor(r, hidden), tx, seed=seed)
    step = make_train_step(graphdef, regression_loss, tx, loss_weights={"mse": 1.0}, schedule=schedule)
    return graphdef, state, jit_train_step(step, state, donate=donate)


def build(seed: int = 0, hidden: int = HIDDEN, donate: bool = True):
    """``(graphdef, fresh state, jitted step)`` of an AdamW run with a warmup-cosine schedule (compiled once)."""
    graphdef, state, step = _template(seed, hidden, donate)
    return graphdef, jax.tree.map(jnp.copy, state), step


def leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(tree)]

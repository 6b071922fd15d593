"""First-step gradient agreement of the ``bcpg_nsa`` methods: at ``pi_ref``, on the one offline dataset, do RFT,
BCPG and NSA point the same way, and how firmly does the data fix each direction?
(``stepjax.evals.gradient_agreement``; written to ``<workdir>/gradient_agreement.json`` and into ``summary.json``.)

At ``theta = pi_ref`` the constraint's gradient is 0 (its log-ratio is 0), so this compares the policy-gradient parts
alone: RFT's ``sum_{r=1} grad log pi(y)`` and BCPG's ``sum (r - r_bar) grad log pi(y)`` have the same expectation per
question (up to ``(G-1)/G``), and NSA moves BCPG's by ``beta`` on the correct steps of negatives. Whatever separates
the methods' results must then come from noise or from the path away from ``pi_ref``, which this figure tells apart.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import numpy as np

GRADIENT_KEYS = ("inputs", "targets", "loss_mask", "positions", "ref_log_probs", "step_mask", "rewards", "baselines")


def method_gradient_fns(
    graphdef,
    reference,
    rows: dict[str, np.ndarray],
    runs: list[tuple[str, str, float]],
    batch_size: int = 64,
    aggregation: str = "sequence_mean",
) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """``{run name: fn(row indices) -> [P] float64}``: the summed (unnormalised) loss gradient of that method over
    those rows at ``reference = (params, extra)``, flattened.

    Args:
      rows: the BCPG rows (``method_rows(..., "bcpg")``: every response of the kept groups); RFT uses their
        positives, as its own rows hold.
      runs: ``planned_runs(config)``: ``(name, method, beta)``.
      batch_size: rows per jitted call (the last batch is padded with empty rows, which add nothing).
      aggregation: BCPG/NSA's ``policy.aggregation``.
    """
    import jax
    import jax.numpy as jnp

    from recipes.bcpg_nsa_runs import loss_fn
    from stepjax.train import merge_model

    params, extra = reference

    def total(params, batch, method: str, beta: float):
        # The training loss itself; tau 0: the constraint's gradient is 0 at pi_ref anyway.
        terms = loss_fn(method, beta, 0.0, aggregation)(merge_model(graphdef, params, extra), batch, None)
        return terms["sft" if method == "rft" else "bcpg"].total

    grad = jax.jit(jax.grad(total), static_argnames=("method", "beta"))

    def make(method: str, beta: float) -> Callable[[np.ndarray], np.ndarray]:
        def fn(indices: np.ndarray) -> np.ndarray:
            summed = None
            for start in range(0, len(indices), batch_size):
                take = indices[start : start + batch_size]
                batch = {k: rows[k][take] for k in GRADIENT_KEYS}
                pad = batch_size - len(take)
                if pad:
                    batch = {k: np.concatenate([v, np.zeros((pad, *v.shape[1:]), v.dtype)]) for k, v in batch.items()}
                g = grad(params, batch, method=method, beta=beta)
                summed = g if summed is None else jax.tree.map(jnp.add, summed, g)
            return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(summed)])

        return fn

    return {name: make(method, float(beta)) for name, method, beta in runs}


def first_step_agreement(config, workdir: str, graphdef, reference, rows: dict[str, np.ndarray]) -> dict[str, Any]:
    """``gradient_agreement`` of every planned run's loss at ``pi_ref`` on ``rows`` over
    ``config.diagnostics.gradient_folds`` folds (one pass over the rows per method); cached in
    ``<workdir>/gradient_agreement.json`` for the same weights, rows and runs."""
    from recipes.bcpg_nsa import planned_runs
    from recipes.stage import params_fingerprint
    from stepjax.evals.gradient_agreement import format_agreement, gradient_agreement

    runs = planned_runs(config)
    settings = {
        "reference": params_fingerprint(reference[0]),
        "rows": int(rows["inputs"].shape[0]),
        "positives": int((rows["rewards"] > 0).sum()),
        "runs": [[name, method, float(beta)] for name, method, beta in runs],
        "folds": int(config.diagnostics.gradient_folds),
        "seed": int(config.seed),
    }
    path = os.path.join(workdir, "gradient_agreement.json")
    if os.path.isfile(path):
        with open(path) as f:
            cached = json.load(f)
        if cached.get("settings") == settings:
            return cached["agreement"]
    fns = method_gradient_fns(graphdef, reference, rows, runs, aggregation=config.policy.aggregation)
    agreement = gradient_agreement(fns, rows["groups"], folds=settings["folds"], seed=settings["seed"])
    with open(path, "w") as f:
        json.dump({"settings": settings, "agreement": agreement}, f, indent=1)
    print("first-step gradients at pi_ref (" + os.path.basename(path) + "):\n" + format_agreement(agreement))
    return agreement

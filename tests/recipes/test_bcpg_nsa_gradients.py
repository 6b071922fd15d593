"""The bcpg_nsa first-step gradients: batched, padded sums over any rows equal one whole-batch gradient of the same
loss (RFT on the positives, BCPG, NSA with its beta), and NSA with beta 1 is BCPG."""

import jax
import numpy as np
from flax import nnx

from recipes.bcpg_nsa_gradients import method_gradient_fns
from stepjax.models.llm import DecoderLM, llm_preset
from stepjax.objectives import bcpg_loss, sft_loss, token_log_probs


def _rows(n=7, width=12, vocab=40, seed=0):
    rng = np.random.default_rng(seed)
    mask = np.zeros((n, width), np.float32)
    for i in range(n):
        mask[i, 4 : 4 + rng.integers(3, width - 4)] = 1.0  # prompt of 4, responses of several lengths
    rewards = np.asarray([1, 0, 0, 1, 1, 0, 1], np.float32)[:n]
    groups = np.asarray([0, 0, 0, 1, 1, 1, 1], np.int32)[:n]
    baselines = np.asarray([rewards[groups == g].mean() for g in groups], np.float32)
    inputs = rng.integers(0, vocab, (n, width)).astype(np.int32)
    return {
        "inputs": inputs,
        "targets": np.roll(inputs, -1, axis=1),
        "positions": np.tile(np.arange(width, dtype=np.int32), (n, 1)),
        "loss_mask": mask,
        "ref_log_probs": rng.normal(-2.0, 0.5, (n, width)).astype(np.float32),
        "step_mask": (mask * (rng.random((n, width)) < 0.5)).astype(np.float32),
        "rewards": rewards,
        "baselines": baselines,
        "groups": groups,
    }


def _flat(tree):
    return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)])


def test_batched_sums_equal_one_whole_batch_gradient():
    cfg = llm_preset("tiny", vocab_size=40, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1, mlp_dim=32)
    graphdef, params, extra = nnx.split(DecoderLM(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)
    rows = _rows()
    runs = [("rft", "rft", 1.0), ("bcpg", "bcpg", 1.0), ("nsa_b-0.5", "nsa", -0.5), ("nsa_b1", "nsa", 1.0)]
    fns = method_gradient_fns(graphdef, (params, extra), rows, runs, batch_size=3)  # 7 rows: the last batch padded
    take = np.asarray([0, 2, 3, 4, 6])

    def whole(p, method, beta):
        logp = token_log_probs(
            nnx.merge(graphdef, p, extra)(rows["inputs"][take], rows["positions"][take]), rows["targets"][take]
        )
        mask, r = rows["loss_mask"][take], rows["rewards"][take]
        if method == "rft":
            return sft_loss(logp, mask * (r > 0)[:, None])["sft"].total
        return bcpg_loss(
            logp,
            rows["ref_log_probs"][take],
            mask,
            r,
            positive_step_mask=rows["step_mask"][take],
            baselines=rows["baselines"][take],
            beta=beta,
            tau=0.0,
        )["bcpg"].total

    for name, method, beta in runs[:3]:
        expected = _flat(jax.grad(whole)(params, method, beta))
        np.testing.assert_allclose(fns[name](take), expected, rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(fns["nsa_b1"](take), fns["bcpg"](take), rtol=1e-6, atol=1e-8)
    assert not np.allclose(fns["nsa_b-0.5"](take), fns["bcpg"](take), rtol=1e-3)  # beta matters

"""The decode matmul-floor skeleton: it multiplies by exactly the model's matmul weights, and XLA, torch and NumPy
compute the same chain (so the three timings are of the same work)."""

import numpy as np

from benchmarks import decode_gemm_floor as bench
from stepjax.models.llm import llm_preset


def test_skeleton_reads_every_matmul_weight_of_the_model():
    cfg = llm_preset("bench_57m")
    per_layer = sum(a * b for a, b in bench.layer_shapes(cfg).values())
    norms = cfg.num_layers * 2 * cfg.hidden_size + cfg.hidden_size
    embedding = cfg.vocab_size * cfg.hidden_size
    assert cfg.num_layers * per_layer + cfg.vocab_size * cfg.hidden_size == cfg.num_params() - embedding - norms
    tiny = llm_preset("tiny")
    layers, head = bench.random_weights(tiny)
    assert len(layers) == tiny.num_layers and head.shape == (tiny.hidden_size, tiny.vocab_size)
    assert all({k: v.shape for k, v in w.items()} == bench.layer_shapes(tiny) for w in layers)


def test_xla_torch_and_numpy_run_the_same_chain():
    import jax.numpy as jnp
    import torch

    cfg = llm_preset("tiny")
    layers, head = bench.random_weights(cfg, seed=3)
    x = np.random.default_rng(0).standard_normal((4, cfg.hidden_size), dtype=np.float32)
    ref = x
    for _ in range(3):
        ref = bench.skeleton_step(ref, layers, head, np)
    xj = jnp.asarray(x)
    xt = torch.from_numpy(x)
    tl = [{k: torch.from_numpy(v) for k, v in layer.items()} for layer in layers]
    for _ in range(3):
        xj = bench.skeleton_step(
            xj, [{k: jnp.asarray(v) for k, v in w.items()} for w in layers], jnp.asarray(head), jnp
        )
        xt = bench.skeleton_step(xt, tl, torch.from_numpy(head), torch)
    assert np.abs(ref).max() > 0.1  # the chain does not decay to zero
    np.testing.assert_allclose(np.asarray(xj), ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(xt.numpy(), ref, rtol=1e-4, atol=1e-5)


def test_main_prints_a_result_line(capsys):
    assert bench.main(["--preset", "tiny", "--steps", "2", "--rounds", "1"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("RESULT decode_gemm_floor_b8_ms ")

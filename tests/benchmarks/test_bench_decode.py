"""The decode benchmark's pieces at a tiny size: the same weights give the same greedy tokens on both sides, and the
bandwidth-limit arithmetic."""

import numpy as np
import pytest

from benchmarks import decode as bench
from stepjax.models.llm import llm_preset

pytestmark = pytest.mark.parity


def test_both_sides_generate_the_same_greedy_tokens():
    import torch

    torch.set_num_threads(1)
    cfg = llm_preset("tiny", vocab_size=128, initializer_range=0.2, norm_eps=1e-5)
    torch_model = bench.build_torch_model(cfg, attn="sdpa").eval()
    hf_state = {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}
    graphdef, state = bench.build_stepjax_model(cfg, hf_state)
    prompts = np.random.default_rng(0).integers(0, cfg.vocab_size, (3, 5)).astype(np.int32)
    ours = bench.stepjax_generate_fn(graphdef, state, prompts, 6)()
    theirs = bench.hf_generate_fn(torch_model, prompts, 6)()
    assert ours.shape == theirs.shape == (3, 6)
    np.testing.assert_array_equal(ours, theirs)


def test_weight_bytes_and_bandwidth():
    cfg = llm_preset("bench_57m")
    # Every parameter but the 32000 x 512 embedding table, 4 bytes each.
    assert bench.weight_bytes_per_token(cfg) == (cfg.num_params() - 32000 * 512) * 4
    assert bench.memory_bandwidth(mib=8, repeats=2) > 1e8


def test_torch_side_runs_where_jax_runs():
    import torch

    assert bench.torch_device("auto", "cpu") == "cpu"
    assert bench.torch_device("auto", "gpu") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert bench.torch_device("cuda", "cpu") == "cuda"  # an explicit choice is kept

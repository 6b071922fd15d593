"""Tests of benchmarks/common.py (timing, ratio, table, RESULT line) and of the train-step benchmark's model building
and parity checks at a tiny size."""

import math

import numpy as np
import pytest

from benchmarks import common
from benchmarks import train_step as bench


def test_median_odd_even_and_empty():
    assert common.median([3.0, 1.0, 2.0]) == 2.0
    assert common.median([4.0, 1.0, 3.0, 2.0]) == 2.5
    assert common.median([7.5]) == 7.5
    with pytest.raises(ValueError):
        common.median([])


def test_ratio():
    assert common.ratio(3.9, 5.2) == pytest.approx(0.75)
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError):
            common.ratio(1.0, bad)


def test_time_calls_counts_warmup_and_repeats():
    calls = []
    times = common.time_calls(lambda: calls.append(1), warmup=2, repeats=3)
    assert len(calls) == 5
    assert len(times) == 3 and all(t >= 0 for t in times)


def test_interleaved_alternates_and_swaps_order():
    order = []
    fns = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    times = common.interleaved(fns, warmup=1, rounds=4)
    warmup, timed = order[:2], order[2:]
    assert warmup == ["a", "b"]
    assert timed == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert {k: len(v) for k, v in times.items()} == {"a": 4, "b": 4}


def test_interleaved_times_each_side():
    import time

    times = common.interleaved({"slow": lambda: time.sleep(0.02), "fast": lambda: None}, warmup=0, rounds=3)
    assert min(times["slow"]) >= 0.02
    assert max(times["fast"]) < 0.02


def test_matmul_peak_is_a_positive_rate():
    peak = common.matmul_peak_flops(n=64, repeats=2)
    assert math.isfinite(peak) and peak > 1e6  # even a slow CPU does more than 1 MFLOP/s


def test_format_table_pads_columns():
    table = common.format_table(["side", "s"], [("stepjax", 5.08412), ("torch (sdpa)", 4.1)])
    lines = table.splitlines()
    assert lines[0] == "side          s    "
    assert lines[1] == "------------  -----"
    assert lines[2] == "stepjax       5.084"
    assert lines[3] == "torch (sdpa)  4.1  "


def test_result_line_format():
    assert common.result_line("train_step_vs_torch", 0.98765, "x") == "RESULT train_step_vs_torch 0.988 x"
    with pytest.raises(ValueError):
        common.result_line("two words", 1.0, "x")


def test_make_batch_is_next_token_shifted():
    batch = bench.make_batch(vocab_size=50, batch=2, seq=6, seed=3)
    assert batch["inputs"].shape == (2, 6) and batch["inputs"].dtype == np.int32
    np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
    np.testing.assert_array_equal(batch["positions"][1], np.arange(6))
    assert batch["loss_mask"].sum() == 12 and (batch["segment_ids"] == 1).all()


@pytest.mark.parity
def test_tiny_models_agree_and_train_identically():
    """The benchmark's own checks at a tiny size: same logits, then the same losses over three AdamW steps."""
    import torch

    from stepjax.models.llm import llm_preset
    from stepjax.train import make_optimizer

    torch.set_num_threads(1)
    cfg = llm_preset("tiny", norm_eps=1e-5)
    batch = bench.make_batch(cfg.vocab_size, batch=2, seq=16)
    torch_model = bench.build_torch_model(cfg, seed=0, attn="eager")
    hf_state = {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}
    tx, _ = make_optimizer(bench.OPTIMIZER, total_steps=10)
    graphdef, state = bench.build_stepjax_state(cfg, hf_state, tx)

    assert bench.logits_max_abs_diff(torch_model, graphdef, state, batch) <= bench.LOGITS_ATOL

    runner = bench.StepjaxRunner(graphdef, state, tx, batch)
    assert runner.compile() > 0
    torch_step = bench.make_torch_step(torch_model, bench.torch_optimizer(torch_model, bench.OPTIMIZER), batch)
    ours = [runner.step() for _ in range(3)]
    theirs = [torch_step() for _ in range(3)]
    np.testing.assert_allclose(ours, theirs, atol=2e-5)
    assert ours[2] < ours[0]  # it trains: same batch three times

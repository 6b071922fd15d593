"""The flash-attention benchmark's harness on CPU (kernel interpreted, tiny shapes): it imports the kernel module (not
the same-named function that ``stepjax.kernels`` re-exports), checks both sides agree, and prints its RESULT line;
without a GPU and without ``--interpret`` it refuses with a message."""

import pytest

from benchmarks import flash_attention as bench


def test_import_flash_returns_the_module():
    fa = bench.import_flash()
    assert fa.__name__ == "stepjax.kernels.flash_attention"
    assert callable(fa.flash_attention) and hasattr(fa, "BlockSizes")


def test_tiny_interpreted_run_prints_a_result(capsys):
    for alibi in ([], ["--alibi"]):
        value = bench.main(["--interpret", "--tiny", *alibi])
        assert value > 0
        assert capsys.readouterr().out.strip().splitlines()[-1].startswith("RESULT flash_fwd_bwd_vs_jax_96 ")


def test_needs_a_gpu_without_interpret():
    with pytest.raises(SystemExit, match="needs a GPU"):
        bench.main([])

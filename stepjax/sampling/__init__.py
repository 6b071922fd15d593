"""Decoding: greedy generation (full recompute) for evals; the KV-cache sampler lands here too."""

from stepjax.sampling.greedy import greedy_generate

__all__ = ["greedy_generate"]

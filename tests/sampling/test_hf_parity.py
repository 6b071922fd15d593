"""Greedy generation and logit warpers against Hugging Face transformers on a tiny random Llama built here.

Hugging Face runs left-padded batches with an attention mask (its convention); stepjax runs right-padded ones with
per-row lengths; the per-row continuations must be identical.
"""

import functools

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from stepjax.models.llm import DecoderLM
from stepjax.models.llm.params import config_from_hf, hf_to_params, load_params_into
from stepjax.sampling import SamplingConfig, generate, pad_prompts, warp

pytestmark = pytest.mark.parity

VOCAB = 96
NEW = 10
PAD = 0


@functools.cache
def _models():
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(config).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # every parameter random (HF inits norms to one), logits O(1)
        for name, p in hf.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1.0 + 0.2 * noise if "norm" in name else 0.15 * noise)
    cfg = config_from_hf(config.to_dict())
    model = nnx.eval_shape(lambda: DecoderLM(cfg, rngs=nnx.Rngs(0)))
    load_params_into(model, hf_to_params({k: v.numpy() for k, v in hf.state_dict().items()}, cfg))
    return hf, nnx.split(model)


def _hf_greedy(hf, prompts, eos=None, processors=None):
    """HF ``generate`` on left-padded prompts; returns each row's continuation (trailing padding removed)."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), PAD, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    with torch.no_grad():
        out = hf.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=NEW,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=PAD,
            logits_processor=processors,
        )
    rows = out[:, width:].tolist()
    if eos is not None:  # HF pads after EOS; keep up to and including it
        rows = [r[: r.index(eos) + 1] if eos in r else r for r in rows]
    return rows


def _ours(graphdef, state, prompts, config):
    tokens, lengths = pad_prompts(prompts, pad_id=PAD)
    out = generate(graphdef, state, tokens, lengths, config, None)
    toks, lens = np.asarray(out.tokens), np.asarray(out.lengths)
    return [toks[r, : lens[r]].tolist() for r in range(len(prompts))]


def _prompts(batch: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    lengths = [7] if batch == 1 else [1, 12, 5, 3, 9, 2, 12, 6]
    return [rng.integers(1, VOCAB, n).tolist() for n in lengths[:batch]]


@pytest.mark.parametrize("batch", [1, 8])
def test_greedy_matches_hf_generate(batch):
    hf, (graphdef, state) = _models()
    prompts = _prompts(batch, seed=batch)
    expected = _hf_greedy(hf, prompts)
    assert _ours(graphdef, state, prompts, SamplingConfig(max_new_tokens=NEW, greedy=True)) == expected
    assert all(len(r) == NEW for r in expected)


def test_greedy_with_eos_matches_hf_generate():
    hf, (graphdef, state) = _models()
    prompts = _prompts(8, seed=3)
    free = _hf_greedy(hf, prompts)
    eos = free[1][4]  # a token some row emits mid-way: rows stop at different steps
    expected = _hf_greedy(hf, prompts, eos=eos)
    assert len({len(r) for r in expected}) > 1
    config = SamplingConfig(max_new_tokens=NEW, greedy=True, stop_tokens=(eos,))
    assert _ours(graphdef, state, prompts, config) == expected


class StepAudioRepetitionProcessor(transformers.LogitsProcessor):
    """Step-Audio's ``RepetitionAwareLogitsProcessor`` (tts.py), as published: window 10, threshold 0.1."""

    def __call__(self, input_ids, scores):
        window_size, threshold = 10, 0.1
        window = input_ids[:, -window_size:]
        if window.shape[1] < window_size:
            return scores
        last_tokens = window[:, -1].unsqueeze(-1)
        repeat_counts = (window == last_tokens).sum(dim=1)
        mask = repeat_counts.float() / window_size > threshold
        scores[mask, last_tokens[mask].squeeze(-1)] = float("-inf")
        return scores


def test_repetition_ban_matches_step_audio_processor_in_hf_generate():
    hf, (graphdef, state) = _models()
    prompt = [[5, 5, 7, 5, 9, 11, 4, 73]]  # shorter than the window at first; the model likes 73 -> 73
    expected = _hf_greedy(hf, prompt, processors=transformers.LogitsProcessorList([StepAudioRepetitionProcessor()]))
    config = SamplingConfig(max_new_tokens=NEW, greedy=True, repetition_window=10, repetition_count=2)
    assert _ours(graphdef, state, prompt, config) == expected
    assert expected != _hf_greedy(hf, prompt), "the ban never fired: the case does not test it"


@pytest.mark.parametrize(
    "params",
    [
        dict(temperature=0.7),
        dict(top_k=5),
        dict(top_p=0.7),
        dict(min_p=0.1),
        dict(temperature=1.5, top_k=20, top_p=0.9, min_p=0.05),
    ],
    ids=["temperature", "top_k", "top_p", "min_p", "all"],
)
def test_warpers_match_hf(params):
    logits = np.random.default_rng(0).normal(0.0, 2.0, (32, 50)).astype(np.float32)
    warpers = []
    if "temperature" in params:
        warpers.append(transformers.TemperatureLogitsWarper(params["temperature"]))
    if "top_k" in params:
        warpers.append(transformers.TopKLogitsWarper(params["top_k"]))
    if "top_p" in params:
        warpers.append(transformers.TopPLogitsWarper(params["top_p"]))
    if "min_p" in params:
        warpers.append(transformers.MinPLogitsWarper(params["min_p"]))
    scores = torch.from_numpy(logits.copy())
    for w in warpers:
        scores = w(None, scores)
    expected = scores.numpy()
    got = np.asarray(warp(jax.numpy.asarray(logits), SamplingConfig(**params)))
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(expected))
    kept = np.isfinite(expected)
    np.testing.assert_allclose(got[kept], expected[kept], rtol=1e-6)

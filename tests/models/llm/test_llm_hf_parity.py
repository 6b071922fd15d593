"""Logit parity with transformers' Llama / Qwen2 / Qwen3 on tiny random models built here (nothing downloaded)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from stepjax.models.llm import DecoderLM
from stepjax.models.llm.params import config_from_hf, hf_to_params, load_params_into, params_to_hf

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.parity

VOCAB = 96
_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    attn_implementation="eager",
)

CASES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(rms_norm_eps=1e-5)),
    # GQA 7:1 with an odd head count (head_dim 8).
    "llama_gqa7": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(hidden_size=56, num_attention_heads=7, num_key_value_heads=1, rope_theta=1e6),
    ),
    # Llama 3.1 frequency scaling, with a short original context so all three frequency bands occur.
    "llama3_rope": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(
            rope_theta=500_000.0,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
        ),
    ),
    # Qwen2.5: q/k/v biases, tied embeddings.
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(rope_theta=1e6, tie_word_embeddings=True)),
    # Qwen3: qk-norm, head_dim decoupled from hidden_size / heads.
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(rope_theta=1e6, head_dim=32)),
}


@functools.cache
def _hf_model(case: str):
    """``(model, config, numpy state dict)``, every parameter random.

    HF zero-inits biases and one-inits norms, which would hide layout errors, so everything is redrawn.
    """
    config_cls, model_cls, extra = CASES[case]
    config = getattr(transformers, config_cls)(**{**_COMMON, **extra})
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(config).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1.0 + 0.2 * noise if "norm" in name else 0.1 * noise)
    state = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    return model, config, state


def _hf_logits(model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(tokens.astype(np.int64))).logits.numpy()


def _stepjax_model(case: str, **overrides) -> DecoderLM:
    _, config, state = _hf_model(case)
    cfg = config_from_hf(config.to_dict(), **overrides)
    # An abstract model (no init compute) filled with the converted weights: how a real checkpoint is loaded.
    model = nnx.eval_shape(lambda: DecoderLM(cfg, rngs=nnx.Rngs(0)))
    return load_params_into(model, hf_to_params(state, cfg))


@functools.cache
def _forward(case: str, scan: bool):
    """Jitted ``(tokens, positions, segment_ids) -> logits`` of the converted model; shared by the tests below
    (same input shapes), so each (case, scan) compiles once."""
    graphdef, params = nnx.split(_stepjax_model(case, scan_layers=scan))
    fn = jax.jit(lambda p, *args: nnx.merge(graphdef, p)(*args))
    return lambda *args: np.asarray(fn(params, *(jnp.asarray(a, jnp.int32) for a in args)))


BATCH, LEN = 2, 24


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_transformers(case):
    hf, _, _ = _hf_model(case)
    tokens = np.random.default_rng(0).integers(0, VOCAB, size=(BATCH, LEN))
    want = _hf_logits(hf, tokens)
    assert np.abs(want).max() > 0.5  # logits of order one: the tolerance below is meaningful
    positions = np.broadcast_to(np.arange(LEN), (BATCH, LEN))
    for scan in (False, True):
        got = _forward(case, scan)(tokens, positions, np.ones((BATCH, LEN)))
        err = np.abs(got - want).max()
        assert err < 1e-4, f"{case} scan_layers={scan}: max abs logit error {err:.2e}"


@pytest.mark.parametrize("case", sorted(CASES))
def test_packed_batch_matches_separate_sequences(case):
    hf, _, _ = _hf_model(case)
    rng = np.random.default_rng(1)
    rows = [(9, 6), (11, 13)]  # sequence lengths packed in each row; the first row ends in padding
    tokens = np.zeros((BATCH, LEN), np.int64)
    positions = np.zeros((BATCH, LEN), np.int64)
    segments = np.zeros((BATCH, LEN), np.int64)
    seqs = []
    for r, lengths in enumerate(rows):
        start = 0
        for s, n in enumerate(lengths):
            seq = rng.integers(0, VOCAB, size=n)
            span = slice(start, start + n)
            tokens[r, span], positions[r, span], segments[r, span] = seq, np.arange(n), s + 1
            seqs.append((r, start, seq))
            start += n
    for scan in (False, True):
        got = _forward(case, scan)(tokens, positions, segments)
        for r, start, seq in seqs:
            err = np.abs(got[r, start : start + len(seq)] - _hf_logits(hf, seq[None])[0]).max()
            assert err < 1e-4, f"{case} scan_layers={scan}, row {r} at {start}: max abs logit error {err:.2e}"


@pytest.mark.parametrize("case", ["llama3_rope", "qwen2"])
def test_exported_weights_load_into_transformers(case):
    hf, config, _ = _hf_model(case)
    model = _stepjax_model(case)
    exported = params_to_hf(nnx.state(model, nnx.Param), model.cfg)
    fresh = getattr(transformers, CASES[case][1])(config).eval()
    tensors = {k: torch.from_numpy(np.array(v)) for k, v in exported.items()}
    missing, unexpected = fresh.load_state_dict(tensors, strict=False)
    assert not unexpected
    assert set(missing) == ({"lm_head.weight"} if config.tie_word_embeddings else set())
    tokens = np.random.default_rng(2).integers(0, VOCAB, size=(1, 16))
    np.testing.assert_allclose(_hf_logits(fresh, tokens), _hf_logits(hf, tokens), atol=1e-6)


def test_llama3_inv_freq_matches_transformers():
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from stepjax.nn import rope_inv_freq

    _, config, _ = _hf_model("llama3_rope")
    want, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    cfg = config_from_hf(config.to_dict())
    got = rope_inv_freq(cfg.head_dim, cfg.rope_theta, dict(cfg.rope_scaling))
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-6)

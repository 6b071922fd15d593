"""``load_hf`` on folders written by transformers' ``save_pretrained``: logits within 1e-4 of torch and identical
greedy continuations, for Llama, GQA 7:1, Qwen2 (qkv bias, tied embeddings) and Qwen3 (qk-norm, odd heads)."""

import copy
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

sys.path.insert(0, str(Path(__file__).parent))
from interop_helpers import CASES, VOCAB, hf_logits, hf_model

from stepjax.interop import load_hf
from stepjax.models.llm.params import hf_to_params
from stepjax.sampling.greedy import greedy_generate

pytestmark = pytest.mark.parity

BATCH, LEN, NEW = 2, 20, 32


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """``{case: folder}`` written by ``save_pretrained`` (safetensors)."""
    out = {}
    for case in CASES:
        folder = tmp_path_factory.mktemp(case)
        hf_model(case).save_pretrained(folder, safe_serialization=True)
        out[case] = folder
    return out


def _forward(model):
    graphdef, state = nnx.split(model)
    fn = jax.jit(lambda s, t: nnx.merge(graphdef, s)(t))
    return lambda tokens: np.asarray(fn(state, jnp.asarray(tokens, jnp.int32)))


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_and_greedy_match_transformers(saved, case):
    hf = hf_model(case)
    cfg, model = load_hf(saved[case])
    assert cfg.param_dtype == "float32" and cfg.num_heads == hf.config.num_attention_heads
    tokens = np.random.default_rng(0).integers(0, VOCAB, size=(BATCH, LEN))
    want = hf_logits(hf, tokens)
    got = _forward(model)(tokens)
    err = np.abs(got - want).max()
    print(f"{case}: max |logit diff| {err:.2e} (max |logit| {np.abs(want).max():.2f})")
    assert np.abs(want).max() > 0.5  # logits of order one: the tolerance is meaningful
    assert err < 1e-4, f"{case}: max abs logit error {err:.2e}"

    prompts = tokens[:, :8]
    with torch.no_grad():
        out = hf.generate(
            torch.from_numpy(prompts.astype(np.int64)),
            attention_mask=torch.ones(prompts.shape, dtype=torch.long),
            do_sample=False,
            max_new_tokens=NEW,
            min_new_tokens=NEW,
            pad_token_id=0,
        )
    want_ids = out[:, prompts.shape[1] :].numpy().tolist()
    graphdef, state = nnx.split(model)
    got_ids = greedy_generate(graphdef, state, prompts.tolist(), max_new_tokens=NEW, eos_id=None, batch_size=BATCH)
    assert got_ids == want_ids


def test_sharded_checkpoint_with_scan_layers(tmp_path):
    """A checkpoint split into many files with an index, loaded into the scan (stacked-layer) layout: every
    parameter equals the in-memory key map's conversion exactly, and the logits match torch."""
    hf = hf_model("qwen3_odd")
    hf.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file() and len(list(tmp_path.glob("*.safetensors"))) > 3
    cfg, model = load_hf(tmp_path, scan_layers=True)
    state_dict = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    want = hf_to_params(state_dict, cfg)
    got = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, got), want)
    assert model.layers.attn.q_proj.kernel[...].shape == (2, 48, 5, 12)
    tokens = np.random.default_rng(1).integers(0, VOCAB, size=(BATCH, LEN))
    assert np.abs(_forward(model)(tokens) - hf_logits(hf, tokens)).max() < 1e-4


def test_bfloat16_checkpoint_keeps_its_dtype_bit_exactly(tmp_path):
    hf = hf_model("qwen2_tied")
    # A copy: .to() also casts buffers (RoPE inv_freq), which would corrupt the shared float32 model.
    copy.deepcopy(hf).to(torch.bfloat16).save_pretrained(tmp_path, safe_serialization=True)
    cfg, model = load_hf(tmp_path)
    assert cfg.param_dtype == "bfloat16" and cfg.dtype == "bfloat16"
    embedding = np.asarray(model.embed.embedding[...])
    assert embedding.dtype == jnp.bfloat16
    want = hf.model.embed_tokens.weight.detach().to(torch.bfloat16).view(torch.int16).numpy()
    np.testing.assert_array_equal(embedding.view(np.int16), want)
    bias = np.asarray(model.layers[1].attn.k_proj.bias[...]).reshape(-1)
    want = hf.model.layers[1].self_attn.k_proj.bias.detach().to(torch.bfloat16).view(torch.int16).numpy()
    np.testing.assert_array_equal(bias.view(np.int16), want)
    # Up-cast on load: float32 parameters, same values.
    cfg32, model32 = load_hf(tmp_path, dtype="float32")
    assert cfg32.param_dtype == "float32"
    np.testing.assert_array_equal(np.asarray(model32.embed.embedding[...]), embedding.astype(np.float32))

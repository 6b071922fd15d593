"""Loading straight onto an 8-device mesh (fsdp=2 x tensor=4): the intended shardings, the same values and the
same logits as on one device."""

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

sys.path.insert(0, str(Path(__file__).parent))
from interop_helpers import numpy_checkpoint

from stepjax.interop import load_hf
from stepjax.models.llm.params import config_from_hf, hf_to_params
from stepjax.sharding import make_mesh

P = PartitionSpec


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen2")
    # 8 heads / 4 KV heads / vocab 96 / mlp 96 all divide tensor=4; hidden 64 divides fsdp=2.
    state = numpy_checkpoint(path, model_type="qwen2", heads=8, kv_heads=4, head_dim=8, hidden=64, mlp=96, tied=True)
    return path, state


def _logits(model, tokens, mesh=None):
    graphdef, state = nnx.split(model)
    fn = jax.jit(lambda s, t: nnx.merge(graphdef, s)(t))
    if mesh is None:
        return np.asarray(fn(state, tokens))
    with jax.set_mesh(mesh):  # activation constraints follow the default rules
        return np.asarray(fn(state, tokens))


@pytest.mark.parametrize("scan", [False, True])
def test_mesh_load_matches_single_device(devices, folder, scan):
    path, state = folder
    mesh = make_mesh({"fsdp": 2, "tensor": 4})
    cfg, single = load_hf(path, scan_layers=scan)
    _, sharded = load_hf(path, mesh=mesh, scan_layers=scan)

    lead = (None,) if scan else ()
    layer = sharded.layers if scan else sharded.layers[0]
    expected = {
        "embed": (sharded.embed.embedding, P("tensor", "fsdp")),
        "q_proj": (layer.attn.q_proj.kernel, P(*lead, "fsdp", "tensor", None)),
        "q_bias": (layer.attn.q_proj.bias, P(*lead, "tensor", None)),
        "o_proj": (layer.attn.o_proj.kernel, P(*lead, "tensor", None, "fsdp")),
        "down": (layer.mlp.down_proj.kernel, P(*lead, "tensor", "fsdp")),
    }
    assert cfg.tie_embeddings and sharded.lm_head is None
    for name, (param, spec) in expected.items():
        array = param[...]
        assert isinstance(array.sharding, NamedSharding) and array.sharding.mesh.shape == mesh.shape, name
        assert array.sharding.spec == spec, (name, array.sharding.spec)
        # Each device really holds only its block.
        block = array.sharding.shard_shape(array.shape)
        assert {s.data.shape for s in array.addressable_shards} == {block}, name
        assert np.prod(array.shape) // np.prod(block) == (4 if name == "q_bias" else 8), name
    for p in jax.tree.leaves(nnx.state(single, nnx.Param)):
        assert len(p.devices()) == 1

    want = hf_to_params(state, cfg)
    got = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(sharded, nnx.Param)))
    jax.tree.map(np.testing.assert_array_equal, got, want)

    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 96, size=(8, 16)), jnp.int32)
    err = np.abs(_logits(sharded, tokens, mesh) - _logits(single, tokens)).max()
    print(f"mesh vs one device (scan={scan}): max |logit diff| {err:.2e}")
    assert err < 1e-5, err


def test_untied_head_is_sharded_over_vocab(devices, tmp_path):
    numpy_checkpoint(tmp_path, heads=4, kv_heads=2, head_dim=16)
    mesh = make_mesh({"fsdp": 2, "tensor": 4})
    cfg, model = load_hf(tmp_path, mesh=mesh)
    assert not cfg.tie_embeddings
    head = model.lm_head.kernel[...]
    assert head.sharding.spec == P("fsdp", "tensor") and head.sharding.shard_shape(head.shape) == (32, 24)
    # kv_heads=2 does not divide tensor=4: that dimension is replicated rather than failing.
    k = model.layers[0].attn.k_proj.kernel[...]
    assert k.sharding.spec == P("fsdp", None, None)
    assert cfg == config_from_hf(json.loads((tmp_path / "config.json").read_text()))

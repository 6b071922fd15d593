"""The kernels lower for GPU (Pallas -> Triton IR) and TPU (Pallas -> Mosaic) at realistic shapes, on a CPU machine.

Interpret mode checks the maths but not that a kernel only uses what the accelerator backends can lower (a
``slice`` in a kernel, a tile that Mosaic's (8, 128) layout rule rejects, ...). Lowering for another platform runs
those checks without the hardware: it stops before the backend compiler (Triton's PTX generation, libtpu's Mosaic
passes), so it is necessary, not sufficient. The GPU lowering asks the (absent) GPU for its compute capability; the
test answers "9.0" through a private JAX hook. If that hook moves in a new jax, the test skips locally but fails
under CI (``CI=true``), so a jax upgrade cannot silently switch the lowering checks off.
"""

import os

import jax
import jax.numpy as jnp
import pytest

from stepjax.kernels.decode_attention import decode_attention_pallas
from stepjax.kernels.flash_attention import BlockSizes, flash_attention_pallas
from stepjax.kernels.fused_logprob import fused_logprob_pallas

pytestmark = pytest.mark.filterwarnings("ignore:The Pallas Triton backend is deprecated")
S = jax.ShapeDtypeStruct
TPU_BLOCKS = BlockSizes(128, 128, 128, 128)  # Mosaic needs 128-lane key rows


def _flash_grads(blocks):
    def fn(q, k, v, seg, slopes):
        def loss(q, k, v):
            out = flash_attention_pallas(
                q,
                k,
                v,
                q_segment_ids=seg,
                kv_segment_ids=seg,
                q_positions=seg,
                kv_positions=seg,
                causal=True,
                alibi_slopes=slopes,
                alibi_sqrt=True,
                block_sizes=blocks,
                interpret=False,
            )
            return out.astype(jnp.float32).sum()

        return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

    args = (
        S((2, 500, 8, 128), jnp.bfloat16),  # 500: not a whole number of blocks
        S((2, 500, 2, 128), jnp.bfloat16),
        S((2, 500, 2, 128), jnp.bfloat16),
        S((2, 500), jnp.int32),
        S((8,), jnp.float32),
    )
    return fn, args


def _decode():
    def fn(q, k, v, lengths, slopes):
        return decode_attention_pallas(q, k, v, lengths, alibi_slopes=slopes, alibi_sqrt=True, interpret=False)

    cache = S((4, 1024, 8, 128), jnp.bfloat16)
    return fn, (S((4, 32, 128), jnp.bfloat16), cache, cache, S((4,), jnp.int32), S((32,), jnp.float32))


def _logprob():
    def fn(h, w, t):
        def loss(h, w):
            lp, lse = fused_logprob_pallas(
                h, w, t, temperature=0.8, soft_cap=30.0, return_lse=True, block_n=128, block_d=128, interpret=False
            )
            return lp.sum() + lse.sum()

        return jax.grad(loss, argnums=(0, 1))(h, w)

    return fn, (S((256, 512), jnp.bfloat16), S((512, 1024), jnp.bfloat16), S((256,), jnp.int32))


KERNELS = {
    "flash": lambda platform: _flash_grads(TPU_BLOCKS if platform == "tpu" else None),
    "decode": lambda platform: _decode(),
    "logprob": lambda platform: _logprob(),
}


def _hook_moved(what: str) -> None:
    message = f"{what} moved in this jax; update the private hook this lowering test relies on"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def fake_gpu(monkeypatch):
    try:
        from jax._src.pallas.triton import gpu_info
    except ImportError:
        _hook_moved("jax._src.pallas.triton.gpu_info")
    if not hasattr(gpu_info, "GpuInfo"):
        _hook_moved("gpu_info.GpuInfo")
    info = gpu_info.GpuInfo(gpu_version=None, arch_name="9.0", compute_capability=90)
    monkeypatch.setattr(gpu_info, "get_gpu_info", lambda: info)


@pytest.mark.parametrize("kernel", KERNELS)
def test_lowers_to_triton(kernel, fake_gpu):
    fn, args = KERNELS[kernel]("cuda")
    text = jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
    assert "__gpu$xla.gpu.triton" in text


@pytest.mark.parametrize("kernel", KERNELS)
def test_lowers_to_mosaic_tpu(kernel):
    try:
        from jax._src.mesh import AbstractDevice
    except ImportError:
        _hook_moved("jax._src.mesh.AbstractDevice")
    device = AbstractDevice(device_kind="TPU v5 lite", num_cores=1, platform="tpu")
    mesh = jax.sharding.AbstractMesh((1,), ("x",), abstract_device=device)
    fn, args = KERNELS[kernel]("tpu")
    with jax.sharding.use_abstract_mesh(mesh):
        text = jax.export.export(jax.jit(fn), platforms=["tpu"])(*args).mlir_module()
    assert "tpu_custom_call" in text

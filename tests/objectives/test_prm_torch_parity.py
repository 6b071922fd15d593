"""PRM loss against ``torch.nn.BCEWithLogitsLoss`` on the labelled positions (random inputs, values and gradients)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from stepjax.objectives.prm import prm_loss

pytestmark = pytest.mark.parity


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_torch_bce_with_logits(seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (5, 16)).astype(np.float32)
    labels = rng.integers(0, 2, (5, 16)).astype(np.int32)
    mask = (rng.random((5, 16)) < 0.3).astype(np.float32)
    sel = mask > 0
    t_logits = torch.tensor(logits, requires_grad=True)
    loss_t = torch.nn.BCEWithLogitsLoss()(t_logits[torch.tensor(sel)], torch.tensor(labels[sel], dtype=torch.float32))
    loss_t.backward()

    def f(lo):
        return prm_loss(lo, jnp.asarray(labels), jnp.asarray(mask))["prm"].value

    value, grad = jax.value_and_grad(f)(jnp.asarray(logits))
    np.testing.assert_allclose(float(value), loss_t.item(), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(grad), t_logits.grad.numpy(), rtol=1e-5, atol=1e-7)

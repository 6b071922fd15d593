"""Group advantages against TRL 1.16's GRPOTrainer formula: ``(r - mean_g) / (nanstd + 1e-4)``, unbiased std per
group (``scale_rewards='group'``) or over the batch (``'batch'``), using TRL's own ``nanstd``."""

import numpy as np
import pytest
import torch
from trl.trainer.utils import nanstd

from stepjax.rl.advantages import group_advantages

pytestmark = pytest.mark.parity


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_advantages_match_trl(scale):
    r = np.random.default_rng(6).normal(size=16).astype(np.float32)
    t = torch.tensor(r)
    mean = t.view(-1, 4).mean(1).repeat_interleave(4)
    want = t - mean
    if scale == "group":
        want = want / (nanstd(t.view(-1, 4), dim=1).repeat_interleave(4) + 1e-4)
    elif scale == "batch":
        want = want / (nanstd(t) + 1e-4)
    got = np.asarray(group_advantages(r, 4, scale=scale))
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-6, atol=1e-6)

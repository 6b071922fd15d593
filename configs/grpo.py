"""GRPO on the arithmetic task: the same SFT warm start as ``orz_ppo``, then GRPO (no critic; group advantages
over the 8 samples of each prompt, std-scaled per group; clipped policy loss, token-mean aggregation).

Run:
  python -m recipes.run --config configs/grpo.py:tiny --workdir workdirs/grpo_tiny

Variants:
  tiny   as configs/orz_ppo.py:tiny with ``rl.algorithm='grpo'``. Expected on a 2-core CPU: held-out accuracy (T=1)
         from about 0.3 to >= 0.85; see the README for measured figures.
  test   a few-second end-to-end run (CI).

Other GRPO options: --config.rl.group_scale=none (Dr. GRPO advantages), --config.rl.aggregation=dr_grpo|
sequence_mean|sequence_sum, --config.rl.clip_eps_high=0.28 (DAPO clip-higher).
"""

from __future__ import annotations

import ml_collections

from configs.orz_ppo import get_config as orz_config


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    if arg not in ("tiny", "test"):
        raise ValueError(f"unknown grpo variant {arg!r}; expected 'tiny' or 'test'")
    config = orz_config(arg)
    config.rl.algorithm = "grpo"
    return config

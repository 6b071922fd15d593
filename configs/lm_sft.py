"""Supervised training of a small decoder LM on the synthetic arithmetic task (ORZ answer format).

Run (the warm-start stage of `make demo`, configs/orz_ppo.py, runs this recipe):
  python -m recipes.run --config configs/lm_sft.py:tiny --workdir workdirs/lm_sft_tiny

Variants:
  tiny   2-layer d=64 byte LM (0.1M parameters), 2-digit addition, 500 steps x 64 rows of 96 tokens.
         About 1.5-2.5 minutes on a 2-core CPU. Expected: eval/accuracy >= 0.9 on 200 held-out problems
         (measured 0.98 on 2026-11-22).
  small  4-layer d=128 byte LM, + and - with 1-3 digits, 2000 steps x 64 rows, 10% of traces with a wrong step.
         About 20-30 minutes on a 2-core CPU.

Override any field: --config.train.total_steps=500 --config.model.num_layers=4 --config.mesh.shape.fsdp=2
"""

from __future__ import annotations

import ml_collections

from recipes.lm_sft import schema


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    config = schema()
    if arg == "tiny":
        config.train.total_steps = 500
        config.train.batch_size = 64
        config.train.log_every = 10
        config.train.eval_every = 250
        config.optimizer.learning_rate = 3e-3
        config.optimizer.warmup_steps = 30
        config.checkpoint.every = 100
    elif arg == "small":
        config.model.update(hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2, mlp_dim=384)
        config.data.update(ops="+-", min_digits=1, max_digits=3, wrong_step_fraction=0.1, seq_len=128)
        config.train.total_steps = 2000
        config.train.batch_size = 64
        config.train.eval_every = 500
        config.optimizer.learning_rate = 2e-3
        config.optimizer.warmup_steps = 100
        config.checkpoint.every = 250
    else:
        raise ValueError(f"unknown lm_sft variant {arg!r}; expected 'tiny' or 'small'")
    return config

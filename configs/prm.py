"""Process reward models on synthetic long chains of thought: PRM (A) trained on first-error labels against PRM (B)
trained on Error Propagation / Error Cessation labels (arXiv 2505.14391; recipe ``prm``).

Run (the README's PRM figures):
  python -m recipes.run --config configs/prm.py:tiny --workdir workdirs/prm_tiny

Variants:
  tiny   chains a₁+…+a_n (3-6 one-digit terms) from a scripted generator that errs at 20% of additions (±1/±10),
         reflects right after an error half of the time and after a propagated step 30% of the time (30% of
         reflections are restarts); 6000 training chains; a 2-layer d=64 byte trunk warm-started by 300 next-token
         steps on the chains, then per scheme a PRM head + trunk trained 800 steps x 32 chains (packed into 14 rows
         of 128 tokens, lr 3e-3); 3 seeds. Held-out: 600 chains for step metrics, 200 problems x 64 candidates for
         Best-of-N (final-step score), PRM@N-step for N in {1, 4, 8}.
         Measured 2026-11-30 on the shared 2-core CPU (11.4 min wall for 3 seeds; per seed: warm start 20-30 s, each
         PRM 40-52 s of training and 35-50 s of evaluation), mean ± std over seeds 0, 1, 2:
           step F1           A (FE) 0.843 ± 0.004   B (EP/EC) 0.873 ± 0.009   (per seed A 0.844/0.847/0.839,
                                                                                B 0.883/0.868/0.867)
           Best-of-16        A 0.878 ± 0.035        B 0.983 ± 0.003           (A 0.840/0.910/0.885, B 0.980/0.985/0.985)
           Best-of-N, B      0.798 (N=1), 0.889 (4), 0.983 (16), 1.000 (64); A peaks at N=16 and drops at N=64
           PRM@N-step, B     0.803 (N=1), 0.973 (4), 0.995 (8); A 0.803, 0.878, 0.837
         A never scores a step below 0.5 (its step F1 is the all-positive value); B flags 26% of the wrong steps.
  test   the same pipeline in seconds (CI end-to-end test): 1 seed, 200 chains, 4 + 6 steps, a 1-layer d=16 model.

Override any field, e.g. --config.seeds='(0,)' --config.train.total_steps=300 --config.prm.train_on_last_step_only=True
"""

from __future__ import annotations

import ml_collections

from recipes.prm import schema


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    config = schema()
    if arg == "tiny":
        pass
    elif arg == "test":
        config.seeds = (0,)
        config.model.update(hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1, mlp_dim=32)
        config.data.update(num_train=200)
        config.warm_start.update(steps=4, batch_size=16)
        config.train.update(total_steps=6, batch_size=16, log_every=2)
        config.optimizer.warmup_steps = 2
        config.eval.update(num_chains=24, num_problems=6, candidates=8, best_of_n=(1, 4, 8), step_search_n=(1, 2))
        config.eval.batch_size = 64
    else:
        raise ValueError(f"unknown prm variant {arg!r}; expected 'tiny' or 'test'")
    return config

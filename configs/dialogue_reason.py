"""DialogueReason on Compound-QA(k): SFT warm start on noisy compound traces, then ORZ PPO, monologue vs dialogue.

Run one format and seed:
  python -m recipes.run --config configs/dialogue_reason.py:tiny --config.format=dialogue --workdir workdirs/dr_dialogue
Run the comparison (3 seeds x both formats, then the mean/spread table and figure):
  python -m recipes.run --config configs/dialogue_reason.py:compare --workdir workdirs/dialogue_reason

Variants:
  tiny     2-layer d=64 byte LM (as orz_ppo tiny). Compound-QA with k in 1..4 sub-problems of different kinds
           (1-2 digit addition, sorting 3 digits, parity of 3-5 bits); warm start: 1000 steps of 16 packed rows of
           448 tokens on traces of a k mix P(k) = 0.4/0.2/0.2/0.2 with noise (10% slips per sub-problem, 30% dropped
           carries, 10% hesitations, 3% box errors); PPO (ORZ settings but unwhitened advantages and a lower rate,
           see the recipe schema) for 100 iterations of 16 prompts x 4 samples (one policy step each at 1e-4),
           reward Acc(k) gated by the format check and a budget of 64 + 64k new tokens.
           Evaluated on 48 held-out prompts per k, greedy and T=1. ``format``: monologue | dialogue.
           About 20-25 min per run on a busy 2-core CPU (two runs side by side; most of it the warm start).
  compare  ``tiny`` for seeds 0, 1, 2 in both formats, then ``acc_vs_k.{png,md,json}`` in the workdir.
  test     the same pipeline in seconds (CI end-to-end test).

Outputs of one run: warm_start/, rl/ (metrics.jsonl, eval_samples.jsonl, checkpoints), rl_curve.png, acc_vs_k.png
(warm start vs PPO), summary.json. See the README for the measured figures.
"""

from __future__ import annotations

import ml_collections

from recipes.dialogue_reason import schema


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    config = schema()
    if arg == "tiny":
        pass
    elif arg == "compare":
        config.compare.update(seeds=(0, 1, 2), formats=("monologue", "dialogue"))
    elif arg == "test":
        config.data.update(num_train=64, k_weights=(0.5, 0.5), budget_base=40, budget_per_problem=40, seq_len=224)
        config.warm_start.update(steps=4, batch_size=8, warmup_steps=1)
        config.rl.update(iterations=2, prompts_per_iteration=2, samples_per_prompt=2, policy_minibatches=1)
        config.rl.update(critic_minibatches=2, prompt_width=96)
        config.eval.update(num_per_k=2, ks=(1, 2), every=2)
        config.train.log_every = 1
        config.checkpoint.every = 2
    else:
        raise ValueError(f"unknown dialogue_reason variant {arg!r}; expected 'tiny', 'compare' or 'test'")
    return config

"""Open-Reasoner-Zero PPO on the arithmetic task: SFT warm start on noisy traces, then PPO with ORZ's settings
(gamma = lambda = 1, no KL, rule reward, advantage whitening, a critic started from the warm-start weights).

Run (the README's main job, `make demo`):
  python -m recipes.run --config configs/orz_ppo.py:tiny --workdir workdirs/orz_ppo_tiny

Variants:
  tiny   2-layer d=64 byte LM; 1-2 digit addition traces in the ORZ answer format, 30% with a random wrong step and
         80% with a systematic dropped-carry habit; 1000 SFT steps, then 300 PPO iterations of 32 prompts x 8
         samples (max 64 new tokens; policy: 4 mini-batch steps per iteration at lr 3e-4, critic: 4 at 2e-3, both
         cosine-decayed to 10% over all their updates). Measured on a 2-core CPU (3 seeds, README): held-out
         accuracy (T=1) 0.44-0.51 -> 0.905-0.935, greedy 0.54-0.61 -> 0.90-0.95, format rate -> 1.0; about 5 min
         on a quiet machine.
  test   the same pipeline in a few seconds (CI end-to-end test): 20 SFT steps, 3 PPO iterations.

Outputs in the workdir: warm_start/ (SFT run), rl/ (metrics.jsonl, checkpoints, tensorboard), rl_curve.png,
summary.json. Override any field, e.g. --config.rl.iterations=500 --config.rl.critic_minibatches=8
"""

from __future__ import annotations

import ml_collections

from recipes.orz_rl import schema


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    config = schema()
    config.rl.algorithm = "ppo"
    if arg == "tiny":
        pass
    elif arg == "test":
        config.warm_start.update(steps=20, batch_size=16, eval_examples=8)
        config.rl.update(iterations=3, prompts_per_iteration=4, samples_per_prompt=2, max_new_tokens=24)
        config.rl.critic_minibatches = 2
        config.data.num_train = 200
        config.eval.update(num_examples=8, every=2)
        config.train.log_every = 1
        config.checkpoint.every = 2
    else:
        raise ValueError(f"unknown orz_ppo variant {arg!r}; expected 'tiny' or 'test'")
    return config

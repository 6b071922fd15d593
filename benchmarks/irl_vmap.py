"""What ``jax.vmap`` over seeds buys for a whole imitation experiment on CPU: one PDEIL run on ``--seeds`` seeds as
one vmapped jit vs the same run on one seed (repeated ``--seeds`` times it is the sequential alternative), and vs
``lax.map`` over the seeds inside one jit (one program, seeds in sequence).

Run: ``python -m benchmarks.irl_vmap`` (a few minutes on a 2-core machine). Options: ``--env`` (cartpole |
pendulum), ``--seeds``, ``--steps`` (environment steps per seed), ``--rounds``.

What is timed: ``train(keys)`` of ``stepjax.irl.make_irl_train('pdeil', ...)`` with the ``configs/pdeil.py``
settings of that environment (the expert's demonstrations are stand-ins: random transitions, enough to time the
code), compiled beforehand (compile times reported separately); the batched and the single-seed programs run in
alternation, medians over ``--rounds``. Before timing, seed 0 of the batched run must start like the single-seed
run on the same key (equal evaluation before training; later values drift apart by float round-off and are only
printed). RESULT: sequential time (``seeds`` x single) over
the batched time (> 1: vmap is faster).
"""

from __future__ import annotations

import argparse
import sys
import time

from benchmarks.common import format_table, interleaved, median, ratio, result_line


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", choices=("cartpole", "pendulum"), default="cartpole")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=51_200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    import jax
    import numpy as np

    sys.path.insert(0, ".")
    from configs.pdeil import get_config
    from recipes.irl import _irl_config, _ppo
    from stepjax.irl import evaluation, make_irl_train
    from stepjax.rl import envs

    config = get_config(f"{args.env}_pdeil")
    config.ppo.total_timesteps = args.steps
    config.ppo.num_evals = 2
    env = envs.make(config.env.name)
    demos = evaluation.random_transitions(env, jax.random.key(0), 8, 1250)
    train, _ = make_irl_train("pdeil", _ppo(config.ppo), _irl_config(config, "pdeil"), env, demos)
    keys = jax.random.split(jax.random.key(1), args.seeds)
    programs = {}
    candidates = (
        ("batched", jax.jit(jax.vmap(train)), keys),
        ("mapped", jax.jit(lambda k: jax.lax.map(train, k)), keys),
        ("single", jax.jit(train), keys[0]),
    )
    for name, fn, arg in candidates:
        start = time.perf_counter()
        compiled = fn.lower(arg).compile()
        programs[name] = (compiled, arg, time.perf_counter() - start)
    batched = programs["batched"][0](keys)[1]["eval/return"]
    single = programs["single"][0](keys[0])[1]["eval/return"]
    # Same program per seed: the evaluation before training must agree; later ones drift apart by float round-off
    # (batched and single matmuls sum in different orders, and RL amplifies that), so they are only reported.
    np.testing.assert_allclose(np.asarray(batched[0, 0]), np.asarray(single[0]), rtol=1e-5, atol=1e-4)
    print(f"seed 0 final return: batched {float(batched[0, -1]):.1f}, single {float(single[-1]):.1f}")
    times = interleaved(
        {n: (lambda c=c, a=a: jax.block_until_ready(c(a))) for n, (c, a, _) in programs.items()},
        warmup=1,
        rounds=args.rounds,
    )
    t_batch, t_single = median(times["batched"]), median(times["single"])
    rows = [
        [f"{args.seeds} seeds, one vmapped jit", t_batch, programs["batched"][2]],
        [f"{args.seeds} seeds, one jit with lax.map (in sequence)", median(times["mapped"]), programs["mapped"][2]],
        ["1 seed", t_single, programs["single"][2]],
        [f"{args.seeds} seeds one after another (= {args.seeds} x 1 seed)", args.seeds * t_single, "-"],
    ]
    print(f"PDEIL on {config.env.name}, {args.steps} environment steps per seed, {jax.devices()[0].platform}")
    print(format_table(["program", "median s (run)", "compile s"], rows))
    print(result_line(f"irl_vmap_{args.env}_{args.seeds}seeds", ratio(args.seeds * t_single, t_batch), "x"))


if __name__ == "__main__":
    main()

"""Subprocess for the resume / preemption tests: trains the tiny regressor with ``run_training`` in ``workdir``.

    python tests/train/loop_worker.py WORKDIR --total N [--kill-at K] [--sleep S] [--checkpoint-every C]

``--kill-at K`` SIGKILLs this process from a hook right after step K (its async checkpoint may still be in flight).
``--sleep S`` sleeps S seconds per step so the parent can signal it mid-run. Prints ``PREEMPTED step=K`` on
``Preempted`` (then exits 0 through it) and ``DONE step=N`` at the end.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from train_helpers import ArrayIterator, build

from stepjax.train import Preempted, run_training


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("workdir")
    p.add_argument("--total", type=int, required=True)
    p.add_argument("--kill-at", type=int, default=0)
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--checkpoint-every", type=int, default=1)
    args = p.parse_args()

    _, state, step_fn = build()

    def hook(step, _state):
        if args.kill_at and step == args.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if args.sleep:
            time.sleep(args.sleep)

    try:
        state = run_training(
            state,
            step_fn,
            ArrayIterator(seed=0),
            args.workdir,
            total_steps=args.total,
            log_every=1,
            checkpoint_every=args.checkpoint_every,
            keep_checkpoints=3,
            hooks=[hook],
            config_snapshot={"total": args.total},
            progress_bar=False,
        )
    except Preempted as e:
        print(f"PREEMPTED step={e.step}", flush=True)
        raise
    print(f"DONE step={int(state.step)}", flush=True)


if __name__ == "__main__":
    sys.exit(main())

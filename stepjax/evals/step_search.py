"""PRM-guided step search (PRM@N-step, llm-rl.md §5.1): at every step, sample ``N`` next steps from a generator and
keep the one the process reward model scores highest.

The generator is any ``propose(problem_index, prefix_steps, n) -> [step text or None]`` (None: the generator would
stop here); the scorer any ``score([(prompt, steps), ...]) -> [[score per step], ...]`` such as
``stepjax.rl.prm_model.make_step_scorer``. Stopping competes with continuing: its score is the PRM's score of the
prefix's last step, so a search can prefer a reflection that repairs a bad last step over stopping on it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

Proposer = Callable[[int, list[str], int], list[str | None]]
Scorer = Callable[[Sequence[tuple[str, Sequence[str]]]], list[list[float]]]


def prm_step_search(
    prompts: Sequence[str], propose: Proposer, score: Scorer, *, n: int, max_steps: int
) -> list[list[str]]:
    """Steps chosen for each prompt (all problems advance together, one batched ``score`` call per round).

    A problem stops when the best option is to stop (every candidate None counts as stopping) or after
    ``max_steps`` steps.
    """
    if n < 1 or max_steps < 1:
        raise ValueError(f"need n >= 1 and max_steps >= 1, got n={n}, max_steps={max_steps}")
    chosen: list[list[str]] = [[] for _ in prompts]
    last_score: list[float | None] = [None] * len(prompts)
    active = list(range(len(prompts)))
    for _ in range(max_steps):
        if not active:
            break
        options: dict[int, list[str | None]] = {i: propose(i, list(chosen[i]), n) for i in active}
        items, owners = [], []
        for i in active:
            for step in dict.fromkeys(s for s in options[i] if s is not None):  # unique, in order
                items.append((prompts[i], [*chosen[i], step]))
                owners.append((i, step))
        scores = score(items) if items else []
        best: dict[int, tuple[float, str | None]] = {}
        for i in active:
            if any(s is None for s in options[i]) and last_score[i] is not None:
                best[i] = (last_score[i], None)
        for (i, step), step_scores in zip(owners, scores, strict=True):
            if i not in best or step_scores[-1] > best[i][0]:
                best[i] = (step_scores[-1], step)
        still = []
        for i in active:
            if i not in best or best[i][1] is None:
                continue
            last_score[i], step = best[i]
            chosen[i].append(step)
            still.append(i)
        active = still
    return chosen

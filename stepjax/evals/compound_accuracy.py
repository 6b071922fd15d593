"""Compound-QA accuracy as a function of k: Acc(k), AllAcc(k), format rate and the diversity/coherency proxies.

Each record is a rendered view of ``stepjax.data.compound_qa`` (``prompt``, ``ground_truth`` JSON with the answers,
the format and the k-scaled budget ``max_new_tokens``). Every prompt is decoded once with its own budget (the
sampler's per-row ``max_new_tokens``), so a reply that runs past the budget is truncated and scores 0, as in training.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from stepjax.data.compound_qa import decode_ground_truth
from stepjax.data.compound_scoring import (
    coherency_proxy,
    diversity_proxy,
    format_ok,
    score_compound,
    strategy_match,
    summarize_scores,
)
from stepjax.sampling import FINISH_STOP, SamplingConfig, generate, pad_prompts


def compound_accuracy(
    graphdef: nnx.GraphDef,
    state: Any,
    records: Sequence[dict],
    tokenizer: Any,
    sampling: SamplingConfig,
    rng: jax.Array | None,
    *,
    add_bos: bool = True,
) -> tuple[dict[str, float], list[str]]:
    """Decodes one reply per record (``sampling.num_samples`` must be 1; greedy or sampled) and scores it.

    Args:
      graphdef, state: the policy (``state`` may be a tuple such as ``(params, extra)``).
      records: views with ``prompt``, ``ground_truth`` (JSON) and ``max_new_tokens`` (<= ``sampling.max_new_tokens``).
    Returns:
      ``(metrics, completions)``. A reply counts as correct only if it stopped within its budget; metrics are those of
      ``summarize_scores`` (``acc_k{k}``, ``all_acc_k{k}``, ``pos_acc_{j}``, ``rejected_*``) plus, per k,
      ``format_rate_k{k}``, ``diversity_k{k}``, ``coherency_k{k}``, ``strategy_match_k{k}``, ``length_k{k}``
      (generated tokens) and their means over all records without the suffix.
    """
    if sampling.num_samples != 1:
        raise ValueError(f"compound_accuracy decodes one reply per prompt; got num_samples={sampling.num_samples}")
    if not records:
        return {}, []
    prefix = [tokenizer.bos_id] if add_bos and tokenizer.bos_id is not None else []
    prompts, lengths = pad_prompts(
        [prefix + tokenizer.encode(r["prompt"]) for r in records], pad_id=sampling.pad_id, multiple_of=16
    )
    truths = [decode_ground_truth(r["ground_truth"]) for r in records]
    budgets = np.array([int(r.get("max_new_tokens", sampling.max_new_tokens)) for r in records], np.int32)
    stop = sampling.stop_tokens or (tokenizer.eos_id,)
    out = generate(
        graphdef, state, prompts, lengths, sampling, rng, max_new_tokens=budgets, stop_tokens=[stop] * len(records)
    )
    tokens, lens, reasons = jax.device_get((out.tokens, out.lengths, out.finish_reason))
    completions = [tokenizer.decode(tokens[i, : lens[i]]) for i in range(len(records))]
    scores, per_reply = [], []
    for text, truth, reason, n in zip(completions, truths, reasons, lens, strict=True):
        score = score_compound(text, truth["answers"])
        stopped = int(reason) == FINISH_STOP
        if not stopped:  # a truncated reply has no answer (ORZ): every position wrong
            score = type(score)((False,) * score.k, score.rejected)
        fmt = truth.get("format")
        scores.append(score)
        per_reply.append(
            dict(
                k=score.k,
                format_rate=float(stopped and (fmt is None or format_ok(text, score.k, fmt))),
                diversity=diversity_proxy(text),
                coherency=coherency_proxy(text),
                strategy_match=strategy_match(text, truth.get("sources", [])),
                length=float(n),
            )
        )
    metrics = summarize_scores(scores)
    for name in ("format_rate", "diversity", "coherency", "strategy_match", "length"):
        metrics[name] = float(np.mean([r[name] for r in per_reply]))
        for k in sorted({r["k"] for r in per_reply}):
            metrics[f"{name}_k{k}"] = float(np.mean([r[name] for r in per_reply if r["k"] == k]))
    return metrics, completions

"""Held-out answer accuracy: greedy completions scored by their boxed answer (``eval/accuracy`` in every recipe)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from flax import nnx

from stepjax.data.answers import answers_match, extract_boxed
from stepjax.data.tokenizers import Tokenizer
from stepjax.sampling import greedy_generate


def answer_accuracy(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    records: Sequence[Mapping[str, Any]],
    tokenizer: Tokenizer,
    *,
    max_new_tokens: int,
    batch_size: int = 64,
    extra: nnx.State | None = None,
    add_bos: bool = True,
) -> tuple[dict[str, float], list[str]]:
    """Greedy-decodes every ``record['prompt']`` and compares the boxed answer with ``record['ground_truth']``.

    Returns ``({'accuracy', 'format_rate', 'mean_length'}, completions)``; ``format_rate`` is the fraction of
    completions with a parsable ``<answer>\\boxed{...}</answer>``.
    """
    prefix = [tokenizer.bos_id] if add_bos and tokenizer.bos_id is not None else []
    prompts = [prefix + tokenizer.encode(r["prompt"]) for r in records]
    outputs = greedy_generate(
        graphdef,
        params,
        prompts,
        max_new_tokens=max_new_tokens,
        eos_id=tokenizer.eos_id,
        pad_id=tokenizer.pad_id,
        extra=extra,
        batch_size=min(batch_size, len(prompts)),
    )
    completions = [tokenizer.decode(ids) for ids in outputs]
    boxed = [extract_boxed(text) for text in completions]
    correct = [answers_match(b, str(r["ground_truth"])) for b, r in zip(boxed, records, strict=True)]
    n = max(len(records), 1)
    metrics = {
        "accuracy": sum(correct) / n,
        "format_rate": sum(b is not None for b in boxed) / n,
        "mean_length": sum(len(o) for o in outputs) / n,
    }
    return metrics, completions

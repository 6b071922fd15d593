"""The offline BCPG-NSA procedure (llm-rl.md §4): sample ``G`` responses per question from ``pi_ref``, score them
by their answer, split the negatives into steps, label each step with a consensus of judges, store the records of
``stepjax.rl.offline_data``, train; and, for several iterations, resample -> relabel -> ``pi_ref <- current`` ->
train (``run_offline_iterations``).

Labels (``ConsensusStepLabeller``): a step is accepted (``I = 1``) only if every judge accepts it (the paper: an LLM
judge AND a thresholded PRM). On synthetic ``a₁+…+a_n`` chains the judges are simulated: the programmatic EP/EC
judge's noise-free labels, flipped independently per judge with probabilities ``q₁, q₂, ...`` and AND-ed. A negative
whose steps cannot be segmented, located or judged is counted and kept without step labels (every token then has
``beta = 1``: it stays a plain BCPG negative), with a warning naming the sample.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np

from stepjax.data.consensus import noisy_judge
from stepjax.data.long_cot import split_response
from stepjax.data.step_judges import Judge, JudgeRequest, ProgrammaticJudge
from stepjax.data.step_segmentation import SegmentationError
from stepjax.rl.offline_data import OfflineRecord, OfflineResponse, step_token_spans
from stepjax.rl.rollout import collect_rollout
from stepjax.sampling import SamplingConfig

log = logging.getLogger(__name__)
MAX_NAMED_WARNINGS = 5  # per LabelCounts: one warning per unlabelled sample up to this many, then a summary


@dataclass
class StepLabels:
    """One labelled response: its step texts, the consensus labels ``I`` and the noise-free judge's labels."""

    steps: list[str]
    labels: list[int]
    truth: list[int]


class ConsensusStepLabeller:
    """Segments a response into steps and labels them ``I = AND_k noisy_k(truth)``.

    Args:
      judge: the noise-free step judge (``stepjax.data.step_judges``; default the programmatic EP/EC judge).
      flip_probs: one flip probability per simulated judge (``(q1, q2)``: the paper's two-judge consensus; one
        entry: a single noisy judge; ``()``: the truth itself).
      separator: the step separator inside ``<think>...</think>`` (``long_cot.split_response``).
      seed: seeds the judges' noise.
    """

    def __init__(
        self,
        judge: Judge | None = None,
        *,
        flip_probs: Sequence[float] = (0.1, 0.1),
        separator: str = "\n",
        seed: int = 0,
    ):
        for q in flip_probs:
            if not 0.0 <= q <= 1.0:
                raise ValueError(f"flip_probs must be in [0, 1], got {tuple(flip_probs)}")
        self.judge = judge or ProgrammaticJudge()
        self.flip_probs = tuple(float(q) for q in flip_probs)
        self.separator = separator
        self.rng = np.random.default_rng(seed)

    def __call__(self, question: str, ground_truth: str, text: str, sample_id: object = None) -> StepLabels:
        """Raises ``ValueError`` (``SegmentationError``, ``JudgeError``) when the response cannot be labelled."""
        steps, answer = split_response(text, separator=self.separator)
        if not steps:
            raise SegmentationError(f"no step inside <think>...</think> of {text[:60]!r}")
        request = JudgeRequest(question, tuple(steps), ground_truth, answer, sample_id)
        truth = np.asarray(self.judge(request), np.int32)
        labels = truth.copy()  # no simulated judge: the truth itself
        for k, q in enumerate(self.flip_probs):
            copy = noisy_judge(truth, q, self.rng)
            labels = copy if k == 0 else labels & copy
        return StepLabels(list(steps), labels.tolist(), truth.tolist())


@dataclass
class LabelCounts:
    """What happened to the negatives of a sampling round (``unlabelled`` names the skipped samples)."""

    negatives: int = 0
    labelled: int = 0
    unlabelled: list[str] = field(default_factory=list)


def label_group(
    tokenizer: Any,
    record: dict,
    completions: Sequence[Sequence[int]],
    rewards: Sequence[float],
    logps: Sequence[Sequence[float]],
    labeller: Callable[..., StepLabels],
    counts: LabelCounts,
    *,
    group_id: object = None,
) -> OfflineRecord:
    """An ``OfflineRecord`` from one prompt's sampled responses (token ids, rewards, per-token ``pi_ref``
    log-probs); the negatives' steps are labelled and mapped to token spans. A negative that cannot be labelled is
    kept without steps, counted in ``counts`` and logged with ``<group_id>#<sample>``."""
    responses = []
    for j, (tokens, r, logp) in enumerate(zip(completions, rewards, logps, strict=True)):
        response = OfflineResponse([int(t) for t in tokens], float(r), [float(v) for v in logp])
        if r <= 0:
            counts.negatives += 1
            name = f"{group_id if group_id is not None else record.get('question', '?')}#{j}"
            text = tokenizer.decode(list(tokens))
            try:
                labelled = labeller(record.get("question", ""), str(record["ground_truth"]), text, name)
                spans = step_token_spans(tokenizer, tokens, labelled.steps)
            except ValueError as err:  # SegmentationError, JudgeError, StepLocationError
                if len(counts.unlabelled) < MAX_NAMED_WARNINGS:
                    log.warning("offline data: negative sample %s has no step labels (%s); kept, beta = 1", name, err)
                counts.unlabelled.append(name)
            else:
                response.steps = [(a, b, int(i)) for (a, b), i in zip(spans, labelled.labels, strict=True)]
                response.step_truth = list(labelled.truth)
                counts.labelled += 1
        responses.append(response)
    return OfflineRecord(record["prompt"], str(record["ground_truth"]), responses, str(record.get("question", "")))


def sample_offline_records(
    graphdef: Any,
    params: Any,
    records: Sequence[dict],
    tokenizer: Any,
    sampling: SamplingConfig,
    rng: jax.Array,
    labeller: Callable[..., StepLabels],
    *,
    prompt_width: int,
    prompts_per_batch: int = 256,
    reward_fns: Sequence[str] = ("orz_math",),
) -> tuple[list[OfflineRecord], LabelCounts]:
    """Samples ``sampling.num_samples`` responses of every prompt record (``prompt``, ``ground_truth``,
    ``question``) from the policy ``params = (params, extra)``, scores them with ``reward_fns``, and labels the
    negatives. ``logp_ref`` is the sampler's log-prob of each token under the unprocessed model, i.e. the policy's
    own log-prob at any temperature (``stepjax.sampling`` returns raw log-probs unless ``processed_logprobs``)."""
    if sampling.processed_logprobs:
        raise ValueError("offline data needs the model's raw log-probs: sample with processed_logprobs=False")
    n = sampling.num_samples
    counts = LabelCounts()
    out: list[OfflineRecord] = []
    for start in range(0, len(records), prompts_per_batch):
        chunk = list(records[start : start + prompts_per_batch])
        rollout = collect_rollout(
            graphdef,
            params,
            chunk,
            tokenizer,
            sampling,
            jax.random.fold_in(rng, start),
            prompt_width=prompt_width,
            reward_fns=tuple(reward_fns),
        )
        mask, targets, logps = (rollout.batch[k] for k in ("loss_mask", "targets", "old_logprobs"))
        for b, record in enumerate(chunk):
            rows = range(b * n, (b + 1) * n)
            tokens = [targets[r][mask[r] > 0] for r in rows]
            values = [logps[r][mask[r] > 0] for r in rows]
            scores = [float(rollout.scores[r]) for r in rows]
            out.append(label_group(tokenizer, record, tokens, scores, values, labeller, counts, group_id=start + b))
    if counts.unlabelled:
        log.warning(
            "offline data: %d of %d negatives have no step labels: %s%s",
            len(counts.unlabelled),
            counts.negatives,
            ", ".join(counts.unlabelled[:20]),
            ", ..." if len(counts.unlabelled) > 20 else "",
        )
    return out, counts


def run_offline_iterations(
    policy: Any,
    *,
    iterations: int,
    sample: Callable[[Any, int], Sequence[OfflineRecord]],
    train: Callable[[Any, Sequence[OfflineRecord], int], Any],
    reference_of: Callable[[Any], Any] = lambda policy: policy,
) -> Any:
    """The multi-iteration loop: for ``k = 0 .. iterations - 1``, ``pi_ref <- current policy``; sample a fresh
    offline dataset from it (``sample(reference, k)``: resample, rescore, relabel, reference log-probs); train the
    policy on it (``train(policy, records, k)``, which starts from the policy it is given). Returns the last policy.

    ``reference_of(policy)`` extracts the sampling/reference weights from the training state (e.g. ``(params,
    extra)``). With ``iterations = 1`` this is plain offline BCPG(-NSA) on one dataset from the initial policy.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    for k in range(iterations):
        t0 = time.perf_counter()
        records = sample(reference_of(policy), k)
        log.info("offline iteration %d: %d records sampled in %.1fs", k, len(records), time.perf_counter() - t0)
        policy = train(policy, records, k)
    return policy

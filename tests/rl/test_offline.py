"""Offline BCPG-NSA data: step -> token spans are exact on the byte tokenizer (multi-byte characters included), labels
are the AND of the noisy judges, an unlabellable negative is counted and named, rows put every mark and reference
log-prob at the right position, records round-trip through JSONL, sampled reference log-probs equal a training
forward pass, and the multi-iteration loop moves pi_ref to the current policy."""

from __future__ import annotations

import itertools
import logging

import jax
import numpy as np
import pytest
from flax import nnx

from stepjax.data import ByteTokenizer, MalformedRecordError
from stepjax.data.long_cot import long_cot_prompt, render_response, sample_chain, split_response
from stepjax.data.prm_labels import ep_ec_labels
from stepjax.models.llm import DecoderLM, llm_preset
from stepjax.objectives import token_log_probs
from stepjax.rl.offline import (
    ConsensusStepLabeller,
    LabelCounts,
    label_group,
    run_offline_iterations,
    sample_offline_records,
)
from stepjax.rl.offline_data import (
    OfflineRecord,
    OfflineResponse,
    StepLocationError,
    encode_offline_rows,
    read_offline_records,
    step_token_spans,
    write_offline_records,
)
from stepjax.sampling import SamplingConfig

TOK = ByteTokenizer()


def _chains(n=40, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        numbers = tuple(int(x) for x in rng.integers(1, 60, size=int(rng.integers(3, 6))))
        out.append(sample_chain(rng, numbers, error_prob=0.4, cessation_prob=0.5, late_cessation_prob=0.5))
    return out


def test_step_token_spans_are_exact_on_bytes():
    for chain in _chains():
        text = render_response(chain)
        tokens = [*TOK.encode(text), TOK.eos_id]
        steps, _ = split_response(text)
        spans = step_token_spans(TOK, tokens, steps)
        assert [TOK.decode(tokens[a:b]) for a, b in spans] == steps
        assert all(b0 <= a1 for (_, b0), (a1, _) in itertools.pairwise(spans))
    # Multi-byte characters before and inside steps: spans still cover exactly the step's bytes.
    text = "<think>é 3+4=7 ✓\nwait, 7+1=8 ✓✓</think><answer>\\boxed{8}</answer>"
    tokens = TOK.encode(text)
    steps, _ = split_response(text)
    spans = step_token_spans(TOK, tokens, steps)
    assert [TOK.decode(tokens[a:b]) for a, b in spans] == steps == ["é 3+4=7 ✓", "wait, 7+1=8 ✓✓"]
    with pytest.raises(StepLocationError, match="step 1"):
        step_token_spans(TOK, tokens, [steps[1], steps[0]])  # out of order


def _group(chains):
    record = {"prompt": long_cot_prompt(chains[0].question), "question": chains[0].question}
    record["ground_truth"] = str(sum(chains[0].numbers))
    texts = [render_response(c) for c in chains]
    tokens = [[*TOK.encode(t), TOK.eos_id] for t in texts]
    rewards = [float(c.correct) for c in chains]
    logps = [list(-np.linspace(0.1, 1.0, len(t))) for t in tokens]
    return record, tokens, rewards, logps


def _same_question_chains(numbers, n, seed, **probs):
    rng = np.random.default_rng(seed)
    return [sample_chain(rng, numbers, **probs) for _ in range(n)]


def test_labels_are_truth_without_noise_and_and_of_judges():
    chains = _same_question_chains((13, 27, 9, 44), 12, 1, error_prob=0.5, cessation_prob=0.3)
    assert {c.correct for c in chains} == {True, False}
    record, tokens, rewards, logps = _group(chains)
    clean = label_group(TOK, record, tokens, rewards, logps, ConsensusStepLabeller(flip_probs=()), LabelCounts())
    for chain, response in zip(chains, clean.responses, strict=True):
        if chain.correct:
            assert response.steps == []  # only negatives are segmented
            continue
        want = ep_ec_labels(chain.steps, chain.correct)  # the generator's own flags
        assert [s[2] for s in response.steps] == want == response.step_truth
    # One judge that flips every label AND one that never flips: nothing is accepted.
    counts = LabelCounts()
    none = label_group(TOK, record, tokens, rewards, logps, ConsensusStepLabeller(flip_probs=(1.0, 0.0)), counts)
    assert all(s[2] == 0 for r in none.responses for s in r.steps)
    assert counts.negatives == counts.labelled == sum(not c.correct for c in chains)


def test_unsegmentable_negative_is_counted_and_named(caplog):
    chains = _same_question_chains((5, 6, 7), 2, 2, error_prob=0.0, cessation_prob=0.0)
    record, tokens, rewards, logps = _group(chains)
    tokens[1] = [*TOK.encode("</think><answer>\\boxed{3}</answer>"), TOK.eos_id]  # no step at all
    logps[1] = [-1.0] * len(tokens[1])
    rewards[1] = 0.0
    counts = LabelCounts()
    with caplog.at_level(logging.WARNING):
        out = label_group(TOK, record, tokens, rewards, logps, ConsensusStepLabeller(), counts, group_id=7)
    assert counts.unlabelled == ["7#1"] and counts.negatives == 1 and counts.labelled == 0
    assert "7#1" in caplog.text
    assert out.responses[1].steps == [] and len(out.responses) == 2  # kept, as a plain BCPG negative


def test_rows_put_marks_and_reference_log_probs_in_place(tmp_path):
    chains = _same_question_chains((13, 27, 9, 44), 8, 3, error_prob=0.5, cessation_prob=0.3)
    record, tokens, rewards, logps = _group(chains)
    labelled = label_group(TOK, record, tokens, rewards, logps, ConsensusStepLabeller(flip_probs=()), LabelCounts())
    # A stray span on a positive response must not reach its row.
    positive = next(j for j, c in enumerate(chains) if c.correct)
    labelled.responses[positive].steps = [(0, 3, 1)]
    uniform = OfflineRecord("Q: 1+1=?\nA: ", "2", [OfflineResponse([49, TOK.eos_id], 1.0, [-0.5, -0.1])] * 2)
    path = tmp_path / "offline.jsonl"
    write_offline_records(path, [labelled, uniform])
    records = read_offline_records(path)
    assert records[0].to_json() == labelled.to_json()

    rows = encode_offline_rows(TOK, records, 160)
    assert rows["inputs"].shape == (10, 160)
    np.testing.assert_allclose(rows["baselines"][:8], np.mean(rewards))
    for j, chain in enumerate(chains):
        mask = rows["loss_mask"][j] > 0
        assert TOK.decode(rows["targets"][j][mask]) == render_response(chain)
        np.testing.assert_allclose(rows["ref_log_probs"][j][mask], logps[j], rtol=1e-6)
        marked = rows["targets"][j][rows["step_mask"][j] > 0]
        want = [s.text for s, label in zip(chain.steps, ep_ec_labels(chain.steps, chain.correct), strict=True) if label]
        assert TOK.decode(marked) == ("".join(want) if not chain.correct else "")
    assert rows["step_mask"][positive].sum() == 0
    assert len(encode_offline_rows(TOK, records, 160, drop_uniform_groups=True)["rewards"]) == 8
    rft = encode_offline_rows(TOK, records, 160, positives_only=True)
    assert (rft["rewards"] > 0).all() and len(rft["rewards"]) == sum(rewards) + 2
    with pytest.raises(ValueError, match=r"record 0 .* response 0"):
        encode_offline_rows(TOK, records, 20)


def test_malformed_record_is_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"x": "q", "ground_truth": "1", "responses": [{"tokens": [1, 2], "r": 0, "logp_ref": [0.1]}]}\n')
    with pytest.raises(MalformedRecordError, match=r"bad.jsonl:1: responses\[0\].logp_ref"):
        read_offline_records(path)


def test_sampled_reference_log_probs_equal_a_training_forward():
    cfg = llm_preset("tiny", vocab_size=259, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, mlp_dim=64)
    graphdef, params, extra = nnx.split(DecoderLM(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)
    prompts = [{"prompt": long_cot_prompt(q), "question": q, "ground_truth": "9"} for q in ("2+3+4", "1+1+7")]
    sampling = SamplingConfig(max_new_tokens=10, num_samples=3, stop_tokens=(TOK.eos_id,), pad_id=TOK.pad_id)
    records, counts = sample_offline_records(
        graphdef, (params, extra), prompts, TOK, sampling, jax.random.key(0), ConsensusStepLabeller(), prompt_width=24
    )
    assert len(records) == 2 and all(len(r.responses) == 3 for r in records)
    assert counts.negatives == 6  # a random model never answers right
    rows = encode_offline_rows(TOK, records, 34)
    model = nnx.merge(graphdef, params, extra)
    logits = model(rows["inputs"], rows["positions"])
    logp = np.asarray(token_log_probs(logits, rows["targets"]))
    mask = rows["loss_mask"] > 0
    np.testing.assert_allclose(logp[mask], rows["ref_log_probs"][mask], atol=2e-4)


def test_iterations_move_the_reference_to_the_current_policy():
    seen = []

    def sample(reference, k):
        seen.append((k, reference))
        return [f"data{k}"]

    def train(policy, records, k):
        assert records == [f"data{k}"]
        return policy + 10

    assert run_offline_iterations(1, iterations=3, sample=sample, train=train) == 31
    assert seen == [(0, 1), (1, 11), (2, 21)]
    with pytest.raises(ValueError, match="iterations"):
        run_offline_iterations(1, iterations=0, sample=sample, train=train)

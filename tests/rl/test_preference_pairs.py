"""Preference pairs: built from hand-made scored completions, JSONL round trip with named bad lines, the row layout
(the same rows ``rollout.training_rows`` builds), and a resumable batch order."""

import json

import numpy as np
import pytest

from stepjax.data import ByteTokenizer, MalformedRecordError
from stepjax.rl.preference_pairs import (
    PairBatches,
    build_pairs,
    encode_pairs,
    pair_length,
    read_pairs,
    truncate_at_first_difference,
    write_pairs,
)
from stepjax.rl.rollout import encode_prompts, training_rows

RECORDS = [
    {"prompt": "Q: 1+1=?", "ground_truth": "2"},  # all right: no pair
    {"prompt": "Q: 2+2=?", "ground_truth": "4"},  # all wrong: no pair
    {"prompt": "Q: 3+3=?", "ground_truth": 6},  # mixed
]
COMPLETIONS = [
    "r0", "r1", "r2", "r3",
    "w0", "w1", "w2", "w3",
    "right-a", "wrong-a", "right-b", "wrong-b",
]  # fmt: skip
SCORES = [1, 1, 1, 1, 0, 0, 0, 0, 1, 0, 1, 0]


def test_build_pairs_only_from_mixed_prompts():
    pairs = build_pairs(RECORDS, COMPLETIONS, SCORES, 4, seed=0)
    assert len(pairs) == 1
    (pair,) = pairs
    assert pair["prompt"] == "Q: 3+3=?" and pair["ground_truth"] == "6"
    assert pair["chosen"] in ("right-a", "right-b") and pair["rejected"] in ("wrong-a", "wrong-b")


def test_build_pairs_is_deterministic_and_seeded():
    runs = {seed: build_pairs(RECORDS, COMPLETIONS, SCORES, 4, seed=seed)[0] for seed in range(12)}
    assert build_pairs(RECORDS, COMPLETIONS, SCORES, 4, seed=3)[0] == runs[3]
    # Different seeds draw different members of the right/wrong sets (4 combinations, 12 seeds).
    assert len({(p["chosen"], p["rejected"]) for p in runs.values()}) > 1


def test_build_pairs_several_per_prompt_are_disjoint():
    pairs = build_pairs(RECORDS, COMPLETIONS, SCORES, 4, seed=0, pairs_per_prompt=5)
    assert len(pairs) == 2  # min(2 right, 2 wrong, 5)
    assert {p["chosen"] for p in pairs} == {"right-a", "right-b"}
    assert {p["rejected"] for p in pairs} == {"wrong-a", "wrong-b"}


def test_build_pairs_prefers_stopped_wrong_answers():
    finish = ["stop"] * 9 + ["length"] + ["stop"] * 2  # wrong-a (row 9) was truncated
    for seed in range(8):
        (pair,) = build_pairs(RECORDS, COMPLETIONS, SCORES, 4, seed=seed, finish_reasons=finish)
        assert pair["rejected"] == "wrong-b"
    # With only a truncated wrong answer, it is still used.
    scores = [1, 1, 1, 1, 0, 0, 0, 0, 1, 0, 1, 1]
    (pair,) = build_pairs(RECORDS, COMPLETIONS, scores, 4, seed=0, finish_reasons=finish)
    assert pair["rejected"] == "wrong-a"


def test_build_pairs_skips_identical_texts_and_checks_sizes():
    assert build_pairs([RECORDS[2]], ["same", "same"], [1, 0], 2, seed=0) == []
    with pytest.raises(ValueError, match="12 completions"):
        build_pairs(RECORDS, COMPLETIONS, SCORES, 3, seed=0)


def test_pairs_file_round_trip(tmp_path):
    pairs = build_pairs(RECORDS, COMPLETIONS, SCORES, 4, seed=0, pairs_per_prompt=2)
    path = write_pairs(tmp_path / "pairs.jsonl", pairs)
    assert read_pairs(path) == pairs
    for line in path.read_text().splitlines():
        assert set(json.loads(line)) == {"prompt", "chosen", "rejected", "ground_truth"}


@pytest.mark.parametrize(
    "bad, message",
    [
        ("{not json", "not valid JSON"),
        ('["a", "b"]', "expected a JSON object"),
        ('{"prompt": "p", "chosen": "c"}', "field 'rejected' must be a string"),
        ('{"prompt": "p", "chosen": 3, "rejected": "r"}', "field 'chosen' must be a string"),
        ('{"prompt": "", "chosen": "c", "rejected": "r"}', "field 'prompt' must be a non-empty string"),
        ('{"prompt": "p", "chosen": "c", "rejected": "r", "ground_truth": [1]}', "ground_truth"),
    ],
)
def test_malformed_pair_names_the_line(tmp_path, bad, message):
    good = json.dumps({"prompt": "p", "chosen": "c", "rejected": "r", "ground_truth": 7})
    path = tmp_path / "pairs.jsonl"
    path.write_text(f"{good}\n\n{bad}\n{good}\n")  # the blank line is skipped but counted
    with pytest.raises(MalformedRecordError, match=rf"pairs\.jsonl:3: .*{message}"):
        read_pairs(path)


def test_read_pairs_lines_empty_and_missing(tmp_path):
    good = json.dumps({"prompt": "p", "chosen": "c", "rejected": "r", "ground_truth": 7})
    path = tmp_path / "pairs.jsonl"
    empty = json.dumps({"prompt": "p", "chosen": "c", "rejected": ""})  # the model stopped at once: valid
    path.write_text(f"\n{good}\n\n{empty}\n")
    pairs, lines = read_pairs(path, return_lines=True)
    assert lines == [2, 4] and pairs[0]["ground_truth"] == "7" and pairs[1]["rejected"] == ""
    path.write_text("\n")
    with pytest.raises(MalformedRecordError, match="no preference pairs"):
        read_pairs(path)
    assert read_pairs(path, allow_empty=True) == []
    with pytest.raises(FileNotFoundError, match=r"nothere\.jsonl"):
        read_pairs(tmp_path / "nothere.jsonl")


def test_encode_pairs_layout_by_hand():
    tok = ByteTokenizer()
    bos, eos, pad = tok.bos_id, tok.eos_id, tok.pad_id
    a, b, c, d, e = (ord(x) for x in "abcde")
    rows, keys = encode_pairs(tok, [{"prompt": "ab", "chosen": "c", "rejected": "de"}], width=6)
    # chosen: BOS a b c EOS; rejected: BOS a b d e EOS
    np.testing.assert_array_equal(rows["chosen_inputs"][0], [bos, a, b, c, eos, pad])  # EOS as input: mask 0 there
    np.testing.assert_array_equal(rows["chosen_targets"][0], [a, b, c, eos, pad, pad])
    np.testing.assert_array_equal(rows["chosen_mask"][0], [0, 0, 1, 1, 0, 0])
    np.testing.assert_array_equal(rows["rejected_inputs"][0], [bos, a, b, d, e, eos])
    np.testing.assert_array_equal(rows["rejected_targets"][0], [a, b, d, e, eos, pad])
    np.testing.assert_array_equal(rows["rejected_mask"][0], [0, 0, 1, 1, 1, 0])
    assert pair_length(tok, {"prompt": "ab", "chosen": "c", "rejected": "de"}) == 6
    # Keys: equal pairs share one, a changed side changes it.
    _, keys2 = encode_pairs(
        tok, [{"prompt": "ab", "chosen": "c", "rejected": "de"}, {"prompt": "ab", "chosen": "c", "rejected": "dd"}], 6
    )
    assert keys2[0] == keys[0] and keys2[1] != keys[0]


def test_encode_pairs_matches_rollout_training_rows():
    """A pair's rows equal ``training_rows`` of the same prompt and completion tokens (the RL layout)."""
    tok = ByteTokenizer()
    pairs = [
        {"prompt": "Q: 12+5=?", "chosen": "<answer>17</answer>", "rejected": "<answer>71</answer> x"},
        {"prompt": "Q: 1+1=?", "chosen": "2", "rejected": "two"},
    ]
    width, new = 12, 24
    rows, _ = encode_pairs(tok, pairs, width + new - 1)
    prompt_tokens, prompt_lengths = encode_prompts(tok, [p["prompt"] for p in pairs], width)
    for side in ("chosen", "rejected"):
        tokens = np.full((2, new), tok.pad_id, np.int32)
        lengths = np.zeros(2, np.int32)
        for i, pair in enumerate(pairs):
            ids = [*tok.encode(pair[side]), tok.eos_id]
            tokens[i, : len(ids)], lengths[i] = ids, len(ids)
        ref = training_rows(prompt_tokens, prompt_lengths, 1, tokens, lengths, np.zeros((2, new), "f4"), tok.pad_id)
        np.testing.assert_array_equal(rows[f"{side}_inputs"], ref["inputs"])
        np.testing.assert_array_equal(rows[f"{side}_targets"], ref["targets"])
        np.testing.assert_array_equal(rows[f"{side}_mask"], ref["loss_mask"])


def test_truncate_at_first_difference_by_hand():
    tok = ByteTokenizer()
    pairs = [
        {"prompt": "ab", "chosen": "cde", "rejected": "cxe"},  # part at the 2nd completion token
        {"prompt": "ab", "chosen": "c", "rejected": "cd"},  # chosen's EOS against rejected's 'd'
        {"prompt": "ab", "chosen": "cd", "rejected": "cd"},  # never part: masks kept
    ]
    rows, _ = encode_pairs(tok, pairs, 8)
    cut = truncate_at_first_difference(rows)
    # Completion targets start at position 2 (after BOS a b).
    np.testing.assert_array_equal(cut["chosen_mask"][0], [0, 0, 1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(cut["rejected_mask"][0], [0, 0, 1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(cut["chosen_mask"][1], [0, 0, 1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(cut["rejected_mask"][1], [0, 0, 1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(cut["chosen_mask"][2], rows["chosen_mask"][2])
    np.testing.assert_array_equal(cut["rejected_mask"][2], rows["rejected_mask"][2])
    assert cut["chosen_inputs"] is rows["chosen_inputs"]  # only the masks change


def test_encode_pairs_too_long_is_named():
    tok = ByteTokenizer()
    with pytest.raises(ValueError, match=r"pairs\.jsonl:7: prompt \+ rejected completion is 9 tokens; at most 7"):
        encode_pairs(tok, [{"prompt": "ab", "chosen": "c", "rejected": "defgh"}], 6, names=["pairs.jsonl:7"])


def test_pair_batches_cover_epochs_and_resume():
    rows = {"x": np.arange(10), "y": np.arange(10) * 2}
    it = PairBatches(rows, 4, seed=1)
    first = [next(it) for _ in range(5)]  # 20 rows: two full epochs
    for batch in first:
        np.testing.assert_array_equal(batch["y"], batch["x"] * 2)
    assert sorted(np.concatenate([b["x"] for b in first])[:10]) == list(range(10))
    it = PairBatches(rows, 4, seed=1)
    next(it), next(it)
    resumed = PairBatches(rows, 4, seed=1)
    resumed.set_state(it.get_state())
    for expected in first[2:]:
        np.testing.assert_array_equal(next(resumed)["x"], expected["x"])

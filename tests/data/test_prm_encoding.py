"""PRM token layout: prompt, then each step followed by the separator, labels on the separator's last token."""

import numpy as np
import pytest

from stepjax.data.prm_encoding import (
    PRMEncodingError,
    encode_prm_example,
    encode_prm_records,
    pack_prm_examples,
    packed_batches,
    step_scores_from_row,
)
from stepjax.data.tokenizers import ByteTokenizer

TOK = ByteTokenizer()


@pytest.mark.parametrize("separator", ["\n", " <sep> "])
def test_layout(separator):
    row = encode_prm_example("Q: 1+2+3=?\nA: ", ["1+2=3", "3+3=7"], [1, 0], TOK, separator=separator, seq_len=64)
    n = 1 + len("Q: 1+2+3=?\nA: 1+2=3" + separator + "3+3=7" + separator)
    assert row["tokens"][0] == TOK.bos_id and (row["tokens"][n:] == TOK.pad_id).all()
    assert TOK.decode(row["tokens"][1:n]) == "Q: 1+2+3=?\nA: 1+2=3" + separator + "3+3=7" + separator
    where = np.flatnonzero(row["step_mask"])
    # each labelled position holds the separator's last byte and ends the text of its step
    assert TOK.decode(row["tokens"][1 : where[0] + 1]).endswith("1+2=3" + separator)
    assert where[1] == n - 1 and row["labels"][where].tolist() == [1, 0] and row["labels"].sum() == 1
    assert step_scores_from_row(np.arange(64.0), row["step_mask"]) == [float(where[0]), float(where[1])]


def test_records_and_errors():
    recs = [{"prompt": "p", "steps": ["a", "b"], "labels": [1, 1]}, {"prompt": "q", "steps": ["c"], "labels": [0]}]
    batch = encode_prm_records(recs, TOK, seq_len=16)
    assert batch["tokens"].shape == (2, 16) and batch["step_mask"].sum(1).tolist() == [2, 1]
    too_long = [*recs, {"prompt": "x" * 20, "steps": ["y"], "labels": [1]}]
    with pytest.raises(PRMEncodingError, match="record 2: the example has 23 tokens, more than seq_len=16"):
        encode_prm_records(too_long, TOK, seq_len=16)
    with pytest.raises(PRMEncodingError, match="2 labels for 1 steps"):
        encode_prm_example("p", ["a"], [1, 0], TOK, seq_len=16)
    with pytest.raises(PRMEncodingError, match="at least one step"):
        encode_prm_example("p", [], [], TOK, seq_len=16)
    with pytest.raises(PRMEncodingError, match="0 or 1"):
        encode_prm_example("p", ["a"], [2], TOK, seq_len=16)


def test_packing_keeps_each_example_intact():
    steps = [["1+2=3"], ["3+4=7", "7+1=8"], ["a" * 20], ["b"]]
    examples = [encode_prm_example("Q", s, [1] * len(s), TOK, seq_len=None) for s in steps]
    lengths = [len(e["tokens"]) for e in examples]  # 8, 14, 23, 4
    packed, places = pack_prm_examples(examples, 24, pad_id=TOK.pad_id, min_rows=4)
    assert packed["tokens"].shape == (4, 24)
    assert [p[0] for p in places] == [0, 0, 1, 2] and [p[2] for p in places] == lengths
    for (row, start, n), ex in zip(places, examples, strict=True):
        np.testing.assert_array_equal(packed["tokens"][row, start : start + n], ex["tokens"])
        np.testing.assert_array_equal(packed["step_mask"][row, start : start + n], ex["step_mask"])
        np.testing.assert_array_equal(packed["positions"][row, start : start + n], np.arange(n))
        assert len(set(packed["segment_ids"][row, start : start + n].tolist())) == 1
    assert packed["segment_ids"][0].tolist() == [1] * 8 + [2] * 14 + [0] * 2
    assert (packed["tokens"][3] == TOK.pad_id).all() and packed["step_mask"].sum() == 5
    with pytest.raises(PRMEncodingError, match="example 2 has 23 tokens, more than seq_len=16"):
        pack_prm_examples(examples, 16, pad_id=TOK.pad_id)


def test_packed_batches_keep_order_and_defer_what_does_not_fit():
    lengths = [10, 10, 30, 5, 25, 10]
    examples = [
        {"tokens": np.full(n, i, np.int32), "labels": np.zeros(n, np.int32), "step_mask": np.ones(n, np.float32)}
        for i, n in enumerate(lengths)
    ]
    batches = packed_batches(examples, iter(range(6)), examples_per_batch=3, rows=1, seq_len=32, pad_id=TOK.pad_id)
    seen = []
    for _ in range(3):
        batch, count = next(batches)
        assert batch["tokens"].shape == (1, 32) and batch["segment_ids"].shape == (1, 32)
        ids = [int(t) for t in dict.fromkeys(batch["tokens"][0].tolist()) if t != TOK.pad_id]
        assert len(ids) == count
        seen += ids
    # 0 and 1 share a row; 2 (30 tokens) waits for the next batch, then 3 and 4 wait in turn; order is kept
    assert seen == [0, 1, 2, 3, 4]

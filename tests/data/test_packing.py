"""Tests for stepjax/data/packing.py: SFT examples, next-fit packing invariants, truncation, no-packing mode."""

import numpy as np
import pytest

from stepjax.data import ByteTokenizer, fit_example, lm_example, pack_examples, sft_example, stack_rows

TOK = ByteTokenizer()


def random_examples(rng, n, min_len=2, max_len=20):
    out = []
    for i in range(n):
        length = int(rng.integers(min_len, max_len + 1))
        tokens = [int(t) for t in rng.integers(1, 250, size=length)]
        mask = [int(m) for m in rng.integers(0, 2, size=length)]
        out.append({"tokens": tokens, "loss_mask": mask, "name": f"ex{i}"})
    return out


def unpack_rows(rows):
    """Reads examples back out of packed rows: per segment, tokens = inputs + last target, mask = [?] + loss_mask."""
    examples = []
    for row in rows:
        seg = row["segment_ids"]
        for s in range(1, seg.max() + 1):
            idx = np.flatnonzero(seg == s)
            tokens = [*row["inputs"][idx].tolist(), int(row["targets"][idx[-1]])]
            examples.append({"tokens": tokens, "target_mask": row["loss_mask"][idx].tolist(), "idx": idx})
    return examples


def check_row_invariants(row, seq_len):
    seg, pos = row["segment_ids"], row["positions"]
    for key, dtype in [
        ("inputs", np.int32),
        ("targets", np.int32),
        ("loss_mask", np.float32),
        ("positions", np.int32),
        ("segment_ids", np.int32),
    ]:
        assert row[key].shape == (seq_len,) and row[key].dtype == dtype, key
    used = np.flatnonzero(seg > 0)
    # Segments occupy a prefix, in order 1..S, each contiguous; padding after them.
    assert np.array_equal(used, np.arange(len(used)))
    assert np.all(np.diff(seg[: len(used)]) >= 0) and np.all(np.diff(seg[: len(used)]) <= 1)
    if len(used):
        assert seg[0] == 1
    pad = seg == 0
    assert np.all(row["loss_mask"][pad] == 0) and np.all(row["inputs"][pad] == 0)
    assert np.all(row["targets"][pad] == 0) and np.all(pos[pad] == 0)
    for t in range(len(used)):
        starts = t == 0 or seg[t] != seg[t - 1]
        assert pos[t] == (0 if starts else pos[t - 1] + 1)
        # Within a segment every target is the next input token.
        if t + 1 < len(used) and seg[t + 1] == seg[t]:
            assert row["targets"][t] == row["inputs"][t + 1]


def test_sft_example_masks_only_response_and_eos():
    ex = sft_example(TOK, "Q: 1+1=?\n", "2é")
    prompt_bytes, response_bytes = list(b"Q: 1+1=?\n"), list("2é".encode())
    assert ex["tokens"] == [257, *prompt_bytes, *response_bytes, 258]
    assert ex["loss_mask"] == [0] * (1 + len(prompt_bytes)) + [1] * (len(response_bytes) + 1)


def test_lm_example_trains_every_token_after_bos():
    ex = lm_example(TOK, "ab")
    assert ex["tokens"] == [257, 97, 98, 258] and ex["loss_mask"] == [0, 1, 1, 1]


@pytest.mark.parametrize("seq_len", [8, 16, 33])
def test_packing_invariants_and_round_trip(seq_len):
    rng = np.random.default_rng(seq_len)
    examples = random_examples(rng, 60, max_len=seq_len + 1)
    rows = pack_examples(examples, seq_len)
    for row in rows:
        check_row_invariants(row, seq_len)
    back = unpack_rows(rows)
    # Every example comes back intact, in order: no target crosses a segment boundary.
    assert [b["tokens"] for b in back] == [e["tokens"] for e in examples]
    for b, e in zip(back, examples, strict=True):
        assert b["target_mask"] == e["loss_mask"][1:]
    # Total trained tokens equal the sum over the unpacked examples.
    total = sum(float(r["loss_mask"].sum()) for r in rows)
    assert total == sum(sum(e["loss_mask"][1:]) for e in examples)
    # Packing actually packs: more than one segment in some row, fewer rows than examples.
    assert len(rows) < len(examples)


def test_next_fit_layout_by_hand():
    # token lengths 5, 5, 5, 10 -> slots 4, 4, 4, 9 in rows of 10: [4+4], [4], [9].
    examples = [{"tokens": list(range(1, n + 1)), "loss_mask": [1] * n} for n in (5, 5, 5, 10)]
    rows = pack_examples(examples, 10)
    assert len(rows) == 3
    assert rows[0]["segment_ids"].tolist() == [1, 1, 1, 1, 2, 2, 2, 2, 0, 0]
    assert rows[0]["positions"].tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 0, 0]
    assert rows[0]["inputs"].tolist() == [1, 2, 3, 4, 1, 2, 3, 4, 0, 0]
    assert rows[0]["targets"].tolist() == [2, 3, 4, 5, 2, 3, 4, 5, 0, 0]
    assert rows[1]["segment_ids"].tolist() == [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    assert rows[2]["segment_ids"].tolist() == [1] * 9 + [0]
    assert rows[2]["targets"].tolist()[:9] == list(range(2, 11))


def test_no_packing_one_example_per_row():
    rng = np.random.default_rng(1)
    examples = random_examples(rng, 20, max_len=12)
    rows = pack_examples(examples, 12, packing=False)
    assert len(rows) == len(examples)
    for row, ex in zip(rows, examples, strict=True):
        check_row_invariants(row, 12)
        assert row["segment_ids"].max() == 1
        assert (row["segment_ids"] == 1).sum() == len(ex["tokens"]) - 1
    assert [b["tokens"] for b in unpack_rows(rows)] == [e["tokens"] for e in examples]


def test_long_examples_truncate_or_raise_by_name():
    long = {"tokens": list(range(1, 41)), "loss_mask": [1] * 40, "name": "record-7"}
    rows = pack_examples([long], 16)
    assert len(rows) == 1
    assert rows[0]["inputs"].tolist() == list(range(1, 17))
    assert rows[0]["targets"].tolist() == list(range(2, 18))
    with pytest.raises(ValueError, match="record-7"):
        pack_examples([long], 16, truncate=False)
    # Exactly seq_len + 1 tokens fits without truncation.
    exact = {"tokens": list(range(1, 18)), "loss_mask": [1] * 17}
    assert fit_example(exact, 16, truncate=False) is exact


def test_fit_example_drops_too_short_and_rejects_mismatched_mask():
    assert fit_example({"tokens": [5], "loss_mask": [1]}, 8) is None
    with pytest.raises(ValueError, match="loss-mask"):
        fit_example({"tokens": [5, 6, 7], "loss_mask": [1, 1], "name": "bad"}, 8)


def test_packing_is_deterministic():
    examples = random_examples(np.random.default_rng(3), 30)
    a, b = pack_examples(examples, 24), pack_examples(examples, 24)
    assert all(np.array_equal(x[k], y[k]) for x, y in zip(a, b, strict=True) for k in x)


def test_stack_rows_pads_with_empty_rows():
    rows = pack_examples([{"tokens": [1, 2, 3], "loss_mask": [0, 1, 1]}], 4)
    batch = stack_rows(rows, batch_size=3, seq_len=4)
    assert batch["inputs"].shape == (3, 4) and batch["loss_mask"].dtype == np.float32
    assert batch["segment_ids"].tolist() == [[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert batch["loss_mask"].sum() == 2

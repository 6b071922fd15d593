"""Tests for stepjax/data/pipeline.py: batch contract, exact resumption, shuffling, sharding, epochs, errors."""

import json

import numpy as np
import pytest

from stepjax.data import ByteTokenizer, make_arithmetic_split, make_lm_pipeline

TOK = ByteTokenizer()
RECORDS = [{"prompt": f"r{i}:", "response": "xy" * (i % 11)} for i in range(60)]


def pipeline(records=RECORDS, **kw):
    args = dict(seq_len=32, batch_size=3, seed=0)
    args.update(kw)
    return make_lm_pipeline(records, TOK, **args)


def segments(batch):
    """(tokens, target_mask) of every packed sample, row by row, read back from the batch."""
    out = []
    for r in range(batch["inputs"].shape[0]):
        seg = batch["segment_ids"][r]
        for s in range(1, seg.max() + 1):
            idx = np.flatnonzero(seg == s)
            tokens = [*batch["inputs"][r, idx].tolist(), int(batch["targets"][r, idx[-1]])]
            out.append((tokens, batch["loss_mask"][r, idx].tolist()))
    return out


def record_ids(batches):
    """Source record id of every sample in order (the prompt is 'r<id>:')."""
    ids = []
    for batch in batches:
        for tokens, _ in segments(batch):
            text = TOK.decode(tokens[1:], stop_at_eos=False)
            ids.append(int(text[1 : text.index(":")]))
    return ids


def take(it, n):
    return [next(it) for _ in range(n)]


def assert_same_batches(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_batches_follow_the_contract():
    batch = next(pipeline())
    dtypes = {
        "inputs": np.int32,
        "targets": np.int32,
        "loss_mask": np.float32,
        "positions": np.int32,
        "segment_ids": np.int32,
    }
    assert set(batch) == set(dtypes)
    for k, dtype in dtypes.items():
        assert batch[k].shape == (3, 32) and batch[k].dtype == dtype, k
    for tokens, mask in segments(batch):
        assert tokens[0] == TOK.bos_id and tokens[-1] == TOK.eos_id
        text = TOK.decode(tokens[1:], stop_at_eos=False)
        response_len = len(text) - text.index(":") - 1
        assert mask == [0.0] * (len(tokens) - 2 - response_len) + [1.0] * (response_len + 1)


@pytest.mark.parametrize(("packing", "num_threads"), [(True, 0), (False, 0), (True, 2)])
def test_restored_state_continues_exactly(packing, num_threads):
    n = 14
    reference = take(pipeline(packing=packing, num_threads=num_threads), n)
    crossed_boundary = False
    for k in (0, 1, 2, 5, 9, 13):
        it = pipeline(packing=packing, num_threads=num_threads)
        take(it, k)
        state = json.loads(json.dumps(it.get_state()))  # must survive a JSON round trip (checkpoint metadata)
        crossed_boundary |= state["pending"] is not None
        take(it, 1)  # the original iterator keeps going; the state must not alias it
        resumed = pipeline(packing=packing, num_threads=num_threads)
        resumed.set_state(state)
        assert_same_batches(take(resumed, n - k), reference[k:])
        # Restoring into an iterator that already moved also works.
        it.set_state(state)
        assert_same_batches(take(it, min(2, n - k)), reference[k : k + 2])
    if packing:
        assert crossed_boundary, "no state was taken with an example carried over to the next row"


def test_finite_epochs_resume_and_stop():
    full = list(pipeline(num_epochs=2))
    assert len(full) > 4
    for k in (0, 3, len(full) - 1, len(full)):
        it = pipeline(num_epochs=2)
        take(it, k)
        resumed = pipeline(num_epochs=2)
        resumed.set_state(json.loads(json.dumps(it.get_state())))
        assert_same_batches(list(resumed), full[k:])


def test_one_epoch_sees_every_record_once_and_trains_every_response_token():
    batches = list(pipeline(num_epochs=1))
    assert sorted(record_ids(batches)) == list(range(len(RECORDS)))
    trained = sum(float(b["loss_mask"].sum()) for b in batches)
    assert trained == sum(len(r["response"]) + 1 for r in RECORDS)  # response bytes + EOS
    assert all(b["inputs"].shape == (3, 32) for b in batches)  # last batch padded, not short


def test_shuffle_is_deterministic_per_seed_and_per_epoch():
    order = record_ids(pipeline(seed=1, num_epochs=1))
    assert order == record_ids(pipeline(seed=1, num_epochs=1))
    assert order != record_ids(pipeline(seed=2, num_epochs=1))
    assert sorted(order) == list(range(60)) and order != list(range(60))
    assert record_ids(pipeline(shuffle=False, num_epochs=1)) == list(range(60))
    two = record_ids(pipeline(seed=1, num_epochs=2))
    assert two[:60] == order and sorted(two[60:]) == list(range(60)) and two[60:] != order  # reshuffled


@pytest.mark.parametrize("shard_count", [2, 3, 7])
def test_shards_are_disjoint_and_cover_the_source(shard_count):
    seen = []
    for shard_index in range(shard_count):
        ids = record_ids(pipeline(num_epochs=1, shard_index=shard_index, shard_count=shard_count))
        assert len(ids) == len(set(ids))
        seen.append(set(ids))
    for i in range(shard_count):
        for j in range(i + 1, shard_count):
            assert not seen[i] & seen[j]
    assert set().union(*seen) == set(range(len(RECORDS)))


def test_state_from_another_stream_is_rejected():
    state = take_state(pipeline(seed=0), 2)
    with pytest.raises(ValueError, match="seed=0 vs 1"):
        pipeline(seed=1).set_state(state)
    with pytest.raises(ValueError, match="shard_index"):
        pipeline(shard_index=1, shard_count=2).set_state(take_state(pipeline(shard_index=0, shard_count=2), 1))


def take_state(it, k):
    take(it, k)
    return it.get_state()


def test_bad_records_are_named():
    records = [{"prompt": "a", "response": "b"}] * 3 + [{"prompt": "long", "response": "z" * 100}]
    with pytest.raises(ValueError, match="source record 3"):
        list(pipeline(records, shuffle=False, num_epochs=1, truncate=False))
    truncated = list(pipeline(records, shuffle=False, num_epochs=1))  # default: cut to the row
    assert max(int(b["segment_ids"][r].astype(bool).sum()) for b in truncated for r in range(3)) == 32
    with pytest.raises(KeyError) as info:
        list(pipeline([{"prompt": "a", "response": "b"}, {"question": "?"}], shuffle=False, num_epochs=1))
    assert any("source record 1" in note for note in info.value.__notes__)
    with pytest.raises(ValueError, match="shard_index"):
        pipeline(shard_index=2, shard_count=2)


def test_custom_to_example_and_dropped_records():
    def only_even(record, tokenizer):
        i = int(record["prompt"][1:-1])
        if i % 2:
            return None
        ids = [tokenizer.bos_id, *tokenizer.encode(record["prompt"]), tokenizer.eos_id]
        return {"tokens": ids, "loss_mask": [1] * len(ids)}

    ids = record_ids(pipeline(num_epochs=1, shuffle=False, to_example=only_even))
    assert ids == list(range(0, 60, 2))


def test_arithmetic_records_through_the_pipeline():
    records = make_arithmetic_split("train", 40, seed=0, digits=(2, 2))
    batches = list(make_lm_pipeline(records, TOK, seq_len=128, batch_size=2, seed=0, shuffle=False, num_epochs=1))
    samples = [s for b in batches for s in segments(b)]
    assert len(samples) == len(records)
    for (tokens, mask), record in zip(samples, records, strict=True):
        assert TOK.decode(tokens) == record["prompt"] + record["response"]
        trained = [t for t, m in zip(tokens[1:], mask, strict=True) if m]
        assert trained == [*TOK.encode(record["response"]), TOK.eos_id]


@pytest.mark.slow
def test_worker_processes_give_the_same_batches_and_resume():
    reference = take(pipeline(), 8)
    with pipeline(worker_count=2) as it:
        first = take(it, 4)
        state = json.loads(json.dumps(it.get_state()))
        assert_same_batches(first + take(it, 4), reference)
    with pipeline(worker_count=2) as resumed:
        resumed.set_state(state)
        assert_same_batches(take(resumed, 4), reference[4:])

"""Tests for stepjax/data/sources.py: in-memory, JSONL and ArrayRecord sources, their errors, grain compatibility."""

import json
import pickle
import re
from concurrent.futures import ThreadPoolExecutor

import grain
import pytest

from stepjax.data import (
    ArrayRecordSource,
    InMemorySource,
    JsonlSource,
    MalformedRecordError,
    open_source,
    write_array_record,
    write_jsonl,
)

RECORDS = [
    {"prompt": "Q: 1+1=?", "response": "2", "id": 0},
    {"text": "héllo wörld 🙂", "nested": {"a": [1, 2, {"b": None}]}},
    {"text": 'line\nbreak "quoted" \\ backslash'},
    [1, 2, 3],
    "a bare string",
]


def test_in_memory_source():
    src = InMemorySource(iter(RECORDS))
    assert len(src) == len(RECORDS)
    assert [src[i] for i in range(len(src))] == RECORDS


def test_jsonl_round_trip(tmp_path):
    path = tmp_path / "data.jsonl"
    assert write_jsonl(path, RECORDS) == len(RECORDS)
    src = JsonlSource(path)
    assert len(src) == len(RECORDS)
    assert [src[i] for i in range(len(src))] == RECORDS
    assert src[3] == RECORDS[3]  # random access out of order
    with pytest.raises(IndexError):
        src[len(RECORDS)]


def test_jsonl_skips_blank_lines(tmp_path):
    path = tmp_path / "blank.jsonl"
    path.write_text('{"a": 1}\n\n   \n{"a": 2}\n\n', encoding="utf-8")
    src = JsonlSource(path)
    assert len(src) == 2 and src[0] == {"a": 1} and src[1] == {"a": 2}


def test_jsonl_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    # Line 2 is blank, line 4 is malformed: record index 2, file line 4.
    path.write_text('{"a": 1}\n\n{"a": 2}\n{"a": \n{"a": 3}\n', encoding="utf-8")
    src = JsonlSource(path)  # lazy: construction only indexes
    assert len(src) == 4
    assert src[0] == {"a": 1} and src[3] == {"a": 3}
    with pytest.raises(MalformedRecordError, match=re.escape(f"{path}:4:")):
        src[2]
    with pytest.raises(MalformedRecordError, match=re.escape(f"{path}:4:")):
        JsonlSource(path, validate=True)


def test_missing_files_raise_file_not_found_naming_path(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match=r"nope\.jsonl"):
        JsonlSource(missing)
    good = tmp_path / "good.array_record"
    write_array_record(good, RECORDS[:2])
    with pytest.raises(FileNotFoundError, match=r"absent\.array_record"):
        ArrayRecordSource([good, tmp_path / "absent.array_record"])


def test_array_record_round_trip_over_several_files(tmp_path):
    a, b = tmp_path / "a.array_record", tmp_path / "b.array_record"
    assert write_array_record(a, RECORDS[:3]) == 3
    assert write_array_record(b, RECORDS[3:]) == 2
    src = ArrayRecordSource([a, b])
    assert len(src) == len(RECORDS)
    assert [src[i] for i in range(len(src))] == RECORDS
    assert src[4] == RECORDS[4] and src[0] == RECORDS[0]
    single = ArrayRecordSource(str(a))
    assert [single[i] for i in range(len(single))] == RECORDS[:3]


def test_sources_feed_grain_map_dataset(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", RECORDS)
    write_array_record(tmp_path / "d.array_record", RECORDS)
    for src in (open_source(tmp_path / "d.jsonl"), open_source(tmp_path / "d.array_record")):
        ds = grain.MapDataset.source(src).map(json.dumps)
        assert list(ds) == [json.dumps(r) for r in RECORDS]


def test_open_source_rejects_unknown_extension(tmp_path):
    with pytest.raises(ValueError, match="cannot tell the format"):
        open_source(tmp_path / "data.parquet")


def test_jsonl_concurrent_reads_and_pickle(tmp_path):
    records = [{"i": i, "pad": "x" * (i % 17)} for i in range(300)]
    path = tmp_path / "many.jsonl"
    write_jsonl(path, records)
    src = JsonlSource(path)
    order = [(7 * i) % 300 for i in range(300)]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(src.__getitem__, order))
    assert got == [records[i] for i in order]
    clone = pickle.loads(pickle.dumps(src))  # what grain worker processes receive
    assert [clone[i] for i in range(0, 300, 37)] == records[0:300:37]

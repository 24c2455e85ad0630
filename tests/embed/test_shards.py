"""Shard output files: complete or absent, list<float32> vectors, dead letters, footer metadata, JSON."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jinabatch.embed.shards import ShardWriter, embedding_array, read_shard_meta, write_dead_letter
from jinabatch.storage import Storage

ID = pa.field("id", pa.int64())
CARRIED = [pa.field("title", pa.string())]


def _writer(out, name="shard-00000", **meta):
    return ShardWriter(Storage.open(out), name, ID, CARRIED, {"model": "m", **meta})


def test_commit_renames_the_temp_file_into_place_with_rows_and_metadata(tmp_path):
    """Nothing at the final path until commit; then one file with every batch, rows and extra in the footer."""
    w = _writer(tmp_path)
    v = np.arange(12, dtype=np.float32).reshape(4, 3)
    w.write(pa.array([1, 2], pa.int64()), v[:2], [pa.array(["a", "b"])])
    w.write(pa.array([], pa.int64()), v[:0], [pa.array([], pa.string())])
    w.write(pa.array([3, 4], pa.int32()), v[2:], [pa.array(["c", "d"])])  # ids are cast to the id field
    final = tmp_path / "shards" / "shard-00000.parquet"
    assert not final.exists() and w.tmp.exists() and w.tmp.name.startswith("shard-00000.parquet.tmp-")
    assert w.commit(rows_dead_letter=2) == str(final)
    assert not w.tmp.exists()
    t = pq.read_table(final)
    assert t.column("id").to_pylist() == [1, 2, 3, 4] and t.column("title").to_pylist() == list("abcd")
    assert t.schema.field("embedding").type == pa.list_(pa.float32())
    assert np.array_equal(np.asarray(t.column("embedding").to_pylist(), np.float32), v)
    assert read_shard_meta(Storage.open(tmp_path), "shards/shard-00000.parquet") == {
        "model": "m", "rows": 4, "rows_dead_letter": 2}


def test_abort_leaves_nothing_behind(tmp_path):
    """An aborted shard leaves neither the final file nor its temp file."""
    w = _writer(tmp_path)
    w.write(pa.array([1]), np.ones((1, 3), np.float32), [pa.array(["a"])])
    w.abort()
    assert list((tmp_path / "shards").iterdir()) == []


def test_a_new_attempt_removes_a_killed_attempts_temp_file(tmp_path):
    """A temp file left by a killed worker is deleted when the shard is started again; others' are kept."""
    (tmp_path / "shards").mkdir()
    stale = tmp_path / "shards" / "shard-00000.parquet.tmp-deadbeef"
    other = tmp_path / "shards" / "shard-00001.parquet.tmp-deadbeef"
    stale.write_bytes(b"half")
    other.write_bytes(b"half")
    w = _writer(tmp_path)
    assert not stale.exists() and other.exists()
    w.abort()


def test_embedding_array_is_list_float32_row_by_row():
    """(n, d) → list<float32> with each row intact (what Milvus bulk import accepts)."""
    v = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float64)
    arr = embedding_array(v)
    assert arr.type == pa.list_(pa.float32()) and len(arr) == 5
    assert np.array_equal(np.asarray(arr.to_pylist(), np.float32), v.astype(np.float32))


def test_dead_letters_written_atomically_and_removed_when_none(tmp_path):
    """Dead letters carry id, file, row, reason, text; a rerun with none removes the old file."""
    rows = [{"id": "x", "source_file": "/a.parquet", "row": 3, "reason": "null text", "text": None}]
    p = write_dead_letter(Storage.open(tmp_path), "shard-00002", rows, pa.string())
    assert p == str(tmp_path / "dead_letter" / "shard-00002.parquet")
    assert pq.read_table(p).to_pylist() == rows
    assert list((tmp_path / "dead_letter").glob("*.tmp-*")) == []
    assert write_dead_letter(Storage.open(tmp_path), "shard-00002", [], pa.string()) is None
    assert not (tmp_path / "dead_letter" / "shard-00002.parquet").exists()


@pytest.mark.parametrize("content", [None, b"not parquet", "no-meta"])
def test_read_shard_meta_is_none_for_missing_broken_or_foreign_files(tmp_path, content):
    """A missing, corrupt or metadata-less file is 'not done' (None), never an exception."""
    p = tmp_path / "s.parquet"
    if content == "no-meta":
        pq.write_table(pa.table({"a": [1]}), p)
    elif content is not None:
        p.write_bytes(content)
    assert read_shard_meta(Storage.open(tmp_path), "s.parquet") is None


def test_json_round_trip_and_missing_is_none(tmp_path):
    """write_json replaces the file whole (no temp left); read_json of a missing file is None."""
    store = Storage.open(tmp_path / "d")
    store.write_json("_manifest.json", {"a": 1})
    store.write_json("_manifest.json", {"a": 2, "b": [1, 2]})
    assert store.read_json("_manifest.json") == {"a": 2, "b": [1, 2]}
    assert [f.name for f in (tmp_path / "d").iterdir()] == ["_manifest.json"]
    assert store.read_json("none.json") is None

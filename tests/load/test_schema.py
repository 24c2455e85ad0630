"""The load's input checks and schema mapping: bad output folders fail before Milvus is touched."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pymilvus import DataType

from fixtures_milvus import DIMS, make_output, sample_texts
from jinabatch.errors import LoadError
from jinabatch.load.schema import MAX_VARCHAR, build_schema, read_output


def _rewrite(path, fn):
    t = pq.read_table(path)
    meta = t.schema.metadata
    pq.write_table(fn(t).replace_schema_metadata(meta), path)


def test_read_output_maps_types_sizes_varchars_and_ignores_temp_files(tmp_path):
    texts = sample_texts(30)
    make_output(tmp_path, texts, rows_per_shard=20, extra={
        "n": pa.array(range(30), pa.int64()), "small": pa.array(range(30), pa.int32()),
        "f64": [i / 7 for i in range(30)], "f32": pa.array([i / 7 for i in range(30)], pa.float32()),
        "flag": [i % 2 == 0 for i in range(30)]})
    inp = read_output(tmp_path)
    assert [s.name for s in inp.shards] == ["shard-00000.parquet", "shard-00001.parquet"]
    assert (inp.rows, inp.dim, inp.model) == (30, DIMS, "jina-embeddings-v3")
    assert inp.id_field.dtype == DataType.VARCHAR and inp.id_field.max_length >= len("doc-000000")
    types = {c.name: c.dtype for c in inp.columns}
    assert types == {"text": DataType.VARCHAR, "n": DataType.INT64, "small": DataType.INT32,
                     "f64": DataType.DOUBLE, "f32": DataType.FLOAT, "flag": DataType.BOOL}
    text_len = next(c.max_length for c in inp.columns if c.name == "text")
    assert max(len(t.encode()) for t in texts) <= text_len <= MAX_VARCHAR
    fields = {f.name: f for f in build_schema(inp).fields}
    assert fields["id"].is_primary and fields["embedding"].params["dim"] == DIMS


def test_int64_ids_become_an_int64_primary_key(tmp_path):
    make_output(tmp_path, sample_texts(5), id_type="int64")
    assert read_output(tmp_path).id_field.dtype == DataType.INT64


def test_unsupported_column_type_is_rejected_naming_the_column(tmp_path):
    make_output(tmp_path, sample_texts(5), extra={"tags": [["a"]] * 5})
    with pytest.raises(LoadError, match=r"shard-00000\.parquet: column 'tags' is list<.*corpus\.columns"):
        read_output(tmp_path)


def test_nulls_in_carried_columns_are_counted_not_rejected(tmp_path):
    """A null in a carried column is data (where it goes depends on the server); only a null id is refused."""
    make_output(tmp_path, sample_texts(6), rows_per_shard=3, extra={
        "n": pa.array([1, None, 3, 4, None, None], pa.int64()), "title": ["a", "b", None, "d", "e", "f"]})
    inp = read_output(tmp_path)
    assert {c.name: c.nulls for c in inp.columns} == {"text": 0, "n": 3, "title": 1}


def test_null_id_in_a_shard_is_rejected(tmp_path):
    make_output(tmp_path, sample_texts(5))
    _rewrite(tmp_path / "shards" / "shard-00000.parquet",
             lambda t: t.set_column(0, "id", pa.array(["a", None, "c", "d", "e"])))
    with pytest.raises(LoadError, match=r"id column 'id' has 1 null value\(s\); a primary key cannot be null"):
        read_output(tmp_path)


def test_int8_int16_columns_map_to_milvus_int8_int16_and_converted_types_are_named(tmp_path):
    """Shard fields the embed stage converted (a timestamp as ISO text) keep their corpus type in metadata."""
    at = datetime(2024, 1, 1, tzinfo=timezone.utc)
    make_output(tmp_path, sample_texts(3), extra={
        "a": pa.array([1, 2, 3], pa.int8()), "b": pa.array([1, 2, 3], pa.int16()),
        "ts": pa.array([at, None, at], pa.timestamp("us", "UTC"))})
    cols = {c.name: c for c in read_output(tmp_path).columns}
    assert (cols["a"].dtype, cols["b"].dtype) == (DataType.INT8, DataType.INT16)
    assert (cols["ts"].dtype, cols["ts"].source_type, cols["ts"].nulls, cols["a"].source_type) == (
        DataType.VARCHAR, "timestamp[us, tz=UTC]", 1, None)


def test_duplicate_ids_across_shards_are_rejected(tmp_path):
    make_output(tmp_path, sample_texts(10), rows_per_shard=5)
    _rewrite(tmp_path / "shards" / "shard-00001.parquet",
             lambda t: t.set_column(0, "id", pa.array(["doc-000000"] * 5)))
    with pytest.raises(LoadError, match=r"id 'doc-000000' appears more than once"):
        read_output(tmp_path)


def test_shard_rows_must_match_the_reports_rows_embedded(tmp_path):
    make_output(tmp_path, sample_texts(10), rows_per_shard=5)
    (tmp_path / "shards" / "shard-00001.parquet").unlink()
    with pytest.raises(LoadError, match=r"shards hold 5 rows but _report.json says rows_embedded = 10"):
        read_output(tmp_path)


def test_unfinished_or_missing_report_is_rejected(tmp_path):
    with pytest.raises(LoadError, match=r"_report.json: no embed report; run the embed stage"):
        read_output(tmp_path)
    make_output(tmp_path, sample_texts(3))
    rep = json.loads((tmp_path / "_report.json").read_text())
    (tmp_path / "_report.json").write_text(json.dumps({**rep, "finished": False}))
    with pytest.raises(LoadError, match=r"did not finish"):
        read_output(tmp_path)


def test_corrupt_shard_is_named(tmp_path):
    make_output(tmp_path, sample_texts(10), rows_per_shard=5)
    (tmp_path / "shards" / "shard-00001.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(LoadError, match=r"shard-00001\.parquet: not a readable Parquet file"):
        read_output(tmp_path)


def test_shard_from_another_run_dimension_is_rejected(tmp_path):
    make_output(tmp_path, sample_texts(10), rows_per_shard=5)
    make_output(tmp_path / "other", sample_texts(5), dims=32)
    (tmp_path / "other" / "shards" / "shard-00000.parquet").replace(tmp_path / "shards" / "shard-00001.parquet")
    with pytest.raises(LoadError, match=r"shard-00001\.parquet: dimensions 32 but _report.json says 64"):
        read_output(tmp_path)

"""Carried-column type rules and conversions (jinabatch.embed.columns), the planner's use of them, and the
ShardWriter writing converted columns — what Milvus bulk import will read as it is."""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jinabatch.embed.columns import SOURCE_TYPE, check_carried_type, shard_fields, shard_type, to_shard
from jinabatch.config import parse_config
from jinabatch.embed.plan import plan_corpus
from jinabatch.embed.shards import ShardWriter
from jinabatch.storage import Storage
from jinabatch.errors import CorpusError

BERLIN = timezone(timedelta(hours=1))


def test_timestamps_become_iso_text_with_the_units_digits_utc_for_aware_ones():
    t = datetime(2024, 3, 5, 6, 7, 8, 123456)
    cases = {
        pa.timestamp("s"): "2024-03-05T06:07:08",
        pa.timestamp("ms"): "2024-03-05T06:07:08.123",
        pa.timestamp("us"): "2024-03-05T06:07:08.123456",
        pa.timestamp("ns"): "2024-03-05T06:07:08.123456000",
        pa.timestamp("us", "UTC"): "2024-03-05T06:07:08.123456Z",
    }
    for typ, want in cases.items():
        assert to_shard(pa.array([t, None], typ)).to_pylist() == [want, None], typ
    # an aware timestamp in another zone is the same instant, written in UTC
    berlin = pa.array([t.replace(tzinfo=BERLIN)], pa.timestamp("ms", "Europe/Berlin"))
    assert to_shard(berlin).to_pylist() == ["2024-03-05T05:07:08.123Z"]


def test_dates_become_yyyy_mm_dd_and_text_order_is_time_order():
    days = [date(2024, 2, 29), date(999, 1, 1), None, date(2023, 12, 31), date(2024, 10, 1)]
    for typ in (pa.date32(), pa.date64()):
        got = to_shard(pa.array(days, typ)).to_pylist()
        assert got == ["2024-02-29", "0999-01-01", None, "2023-12-31", "2024-10-01"]
        assert sorted(x for x in got if x) == [d.isoformat() for d in sorted(d for d in days if d)]
    stamps = [datetime(2024, 1, 1, 23, 59, 59, 999000, tzinfo=timezone.utc) + timedelta(seconds=s)
              for s in (0, 0.001, 9, 86400 * 40, -86400 * 400)]
    text = to_shard(pa.array(stamps, pa.timestamp("ms", "UTC"))).to_pylist()
    assert sorted(text) == [to_shard(pa.array([s], pa.timestamp("ms", "UTC")))[0].as_py() for s in sorted(stamps)]


def test_types_milvus_import_cannot_read_are_converted_and_values_kept():
    """uint → the next signed int, large_string / dictionary → string, float16 → float32; NaN → null."""
    assert to_shard(pa.array([0, 255, None], pa.uint8())).type == pa.int16()
    assert to_shard(pa.array([0, 2 ** 32 - 1], pa.uint32())).to_pylist() == [0, 2 ** 32 - 1]
    assert to_shard(pa.array(["a", None], pa.large_string())).type == pa.string()
    cat = pa.array(["red", "blue", None, "red"]).dictionary_encode()
    assert to_shard(cat).to_pylist() == ["red", "blue", None, "red"] and to_shard(cat).type == pa.string()
    assert to_shard(pa.array([1.5, None], pa.float16())).to_pylist() == [1.5, None]
    assert to_shard(pa.array([1.0, float("nan"), None, 2.5])).to_pylist() == [1.0, None, None, 2.5]
    same = pa.array([1, None, 3], pa.int32())
    assert to_shard(same) is same  # nothing to convert: the array is passed through


def test_uint64_and_types_without_a_milvus_scalar_are_refused_naming_file_column_and_setting():
    with pytest.raises(CorpusError, match=r"a\.parquet: carried column 'h' is uint64; corpus\.columns takes .*int64"):
        check_carried_type("a.parquet", "h", pa.uint64())
    for t in (pa.list_(pa.string()), pa.decimal128(10, 2), pa.binary(), pa.time32("s")):
        assert shard_type(t) is None
        with pytest.raises(CorpusError, match=r"drop it from corpus\.columns"):
            check_carried_type("a.parquet", "x", t)


def test_plan_accepts_dates_and_timestamps_and_refuses_uint64_ids_before_any_request(tmp_path):
    f = tmp_path / "c" / "a.parquet"
    f.parent.mkdir()
    pq.write_table(pa.table({"id": pa.array([1, 2], pa.uint64()), "text": ["a", "b"],
                             "day": pa.array([date(2024, 1, 1), None], pa.date32()),
                             "at": pa.array([datetime(2024, 1, 1), None], pa.timestamp("ns"))}), f)
    cfg = parse_config({"corpus": {"path": str(f.parent), "columns": ["day", "at"]}})
    with pytest.raises(CorpusError, match=r"a\.parquet: id column 'id' \(corpus\.id_column\) is uint64"):
        plan_corpus(cfg, Storage.open(tmp_path / "out"))
    pq.write_table(pq.read_table(f).set_column(0, "id", pa.array([1, 2], pa.int32())), f)
    plan = plan_corpus(cfg, Storage.open(tmp_path / "out"))
    assert plan.column_types == {"day": pa.date32(), "at": pa.timestamp("ns")}


def test_shard_writer_writes_converted_columns_and_names_their_corpus_type(tmp_path):
    id_field = pa.field("id", pa.int32())
    carried = [pa.field("day", pa.date32()), pa.field("n", pa.uint16()), pa.field("title", pa.string())]
    w = ShardWriter(Storage.open(tmp_path), "shard-00000", id_field, carried, {"model": "m"})
    import numpy as np

    w.write(pa.array([7, 8], pa.int32()), np.ones((2, 4), np.float32),
            [pa.array([date(2024, 5, 6), None], pa.date32()), pa.array([65535, None], pa.uint16()),
             pa.array([None, "t"])])
    path = w.commit()
    t = pq.read_table(path)
    assert t.schema.field("id").type == pa.int64()  # a Milvus INT64 primary key
    assert [t.schema.field(n).type for n in ("day", "n", "title")] == [pa.string(), pa.int32(), pa.string()]
    assert t.schema.field("day").metadata[SOURCE_TYPE] == b"date32[day]"
    assert t.schema.field("title").metadata is None
    assert t.to_pydict()["day"] == ["2024-05-06", None] and t.to_pydict()["n"] == [65535, None]
    assert shard_fields(id_field, carried)[0].type == pa.int64()

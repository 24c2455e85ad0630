"""Carried columns: which Arrow types the embed stage carries, and what it writes for them in the shards.

Milvus bulk import reads a shard file exactly as it is, so every value must already have a type a Milvus
scalar field takes (Milvus has no date, timestamp, unsigned or large-string type; its Parquet reader takes
``string``, ``bool``, ``int8``–``int64``, ``float32``/``float64`` only). The planner calls
``check_carried_type`` / ``check_id_type`` for every file (before any request), and ``ShardWriter`` passes
its fields through ``shard_fields`` and its arrays through ``to_shard``:

==========================================  ===========================================================
corpus column (Arrow type)                  shard column
==========================================  ===========================================================
string, large_string, dictionary<string>    string
int8 / int16 / int32 / int64, bool          unchanged
uint8 / uint16 / uint32                     int16 / int32 / int64 (the next signed type holds every value)
float32 / float64 (float16 → float32)       unchanged, except NaN → null (Milvus refuses NaN scalars)
date32 / date64                             string ``YYYY-MM-DD``
timestamp, no time zone                     string ``YYYY-MM-DDTHH:MM:SS[.fff…]`` (as written)
timestamp with a time zone                  string ``YYYY-MM-DDTHH:MM:SS[.fff…]Z`` (converted to UTC)
==========================================  ===========================================================

Dates become ISO-8601 text, not epoch numbers: the text reads the same in search output and in a filter
(``published >= "2024-03-01"``), it carries no unit to guess (s, ms, µs, ns) and no time zone to guess
(aware timestamps are UTC and say ``Z``), and because every value of one column has the same width and zone,
text order is time order — so Milvus's string comparisons are range filters. Fractional digits follow the
column's unit (ms: 3, µs: 6, ns: 9). Nulls stay null everywhere.

A converted field keeps its corpus type in its Arrow field metadata (``jinabatch.source_type``), so the load
and people reading a shard can tell a date column from a text column.
"""
from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from ..errors import CorpusError

__all__ = ["check_carried_type", "check_id_type", "shard_type", "shard_fields", "to_shard", "SOURCE_TYPE",
           "is_date_like"]

SOURCE_TYPE = b"jinabatch.source_type"
_UNSIGNED = {pa.uint8(): pa.int16(), pa.uint16(): pa.int32(), pa.uint32(): pa.int64()}
_SAME = (pa.string(), pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.float32(), pa.float64(), pa.bool_())
_ACCEPTED = ("string, integer (not uint64), float, bool, date or timestamp")


def is_date_like(t: pa.DataType) -> bool:
    """True for date and timestamp types (written as ISO-8601 text in the shards)."""
    return pa.types.is_date(t) or pa.types.is_timestamp(t)


def shard_type(t: pa.DataType) -> pa.DataType | None:
    """The type a carried column of corpus type ``t`` has in the shards (None: not carried)."""
    if t in _SAME:
        return t
    if pa.types.is_large_string(t) or is_date_like(t):
        return pa.string()
    if pa.types.is_dictionary(t) and (pa.types.is_string(t.value_type) or pa.types.is_large_string(t.value_type)):
        return pa.string()
    if t == pa.float16():
        return pa.float32()
    return _UNSIGNED.get(t)


def check_carried_type(path: str, name: str, t: pa.DataType) -> None:
    """CorpusError naming the file, column and setting if the embed stage cannot carry a column of type ``t``."""
    if shard_type(t) is not None:
        return
    hint = ("cast it to int64 in the corpus (or to string if values exceed 2^63 - 1)" if t == pa.uint64()
            else "cast it to one of those in the corpus, or drop it from corpus.columns")
    raise CorpusError(f"{path}: carried column {name!r} is {t}; corpus.columns takes {_ACCEPTED} columns — {hint}")


def check_id_type(path: str, name: str, t: pa.DataType) -> None:
    """Ids become a Milvus primary key (VARCHAR or INT64): refuse uint64, whose values may not fit."""
    if t == pa.uint64():
        raise CorpusError(f"{path}: id column {name!r} (corpus.id_column) is uint64, but a Milvus primary key is "
                          "int64 or string — cast the ids to int64 (if all are below 2^63) or to string in the corpus")


def _id_shard_type(t: pa.DataType) -> pa.DataType:
    if pa.types.is_integer(t):
        return pa.int64()
    if pa.types.is_large_string(t):
        return pa.string()
    return t


def shard_fields(id_field: pa.Field, carried: Sequence[pa.Field]) -> tuple[pa.Field, list[pa.Field]]:
    """The shard schema's id field (integers → int64, large_string → string) and carried fields."""
    out = []
    for f in carried:
        st = shard_type(f.type)
        if st is None:
            check_carried_type("(shard writer)", f.name, f.type)
        meta = dict(f.metadata or {})
        if st != f.type:
            meta[SOURCE_TYPE] = str(f.type).encode()
        out.append(pa.field(f.name, st, nullable=True, metadata=meta or None))
    return id_field.with_type(_id_shard_type(id_field.type)), out


def _iso(arr: pa.Array) -> pa.Array:
    t = arr.type
    if pa.types.is_date(t):
        return pc.strftime(arr, format="%Y-%m-%d")
    if t.tz is not None:  # aware: the instant in UTC, marked Z (one zone per column, so text order = time order)
        return pc.strftime(arr.cast(pa.timestamp(t.unit, "UTC")), format="%Y-%m-%dT%H:%M:%SZ")
    return pc.strftime(arr, format="%Y-%m-%dT%H:%M:%S")  # %S carries the unit's fraction digits


def to_shard(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    """``arr`` (a carried column as read from the corpus) converted to its shard type; nulls stay null."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    t = arr.type
    if t in _SAME and not pa.types.is_floating(t):
        return arr
    if is_date_like(t):
        return _iso(arr)
    if pa.types.is_dictionary(t):
        return arr.cast(t.value_type).cast(pa.string())
    if pa.types.is_floating(t):
        arr = arr.cast(pa.float32()) if t == pa.float16() else arr
        nan = pc.is_nan(arr)
        return pc.if_else(nan, pa.scalar(None, arr.type), arr) if pc.any(nan).as_py() else arr
    st = shard_type(t)
    if st is None:
        check_carried_type("(shard writer)", "?", t)
    return arr.cast(st)

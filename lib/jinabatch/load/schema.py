"""What the load stage reads: the embed stage's output folder, checked, turned into a Milvus schema.

``read_output(path)`` opens ``_report.json`` and every ``shards/shard-*.parquet`` (temp files beside
them are ignored) of a local folder or an object-store prefix (``s3://...``, through ``jinabatch.storage``),
checks that the shards agree with the report and with each other (id column,
dimension, columns, model) and scans only the id and string columns to size the VARCHAR fields and
to catch duplicate ids — Milvus import never dedups, so a duplicate would silently become two rows.
Vectors are not read here. ``build_schema`` maps the result to a ``CollectionSchema``:

=========================  =====================================
Arrow type (shard column)  Milvus field
=========================  =====================================
id: string / int64         VARCHAR primary key (max_length fits the data) / INT64 primary key
embedding: list<float32>   FLOAT_VECTOR(dim = the run's dimension)
string                     VARCHAR (max_length fits the data, ≤ 65,535 bytes)
int64 / int32 / int16 / 8  INT64 / INT32 / INT16 / INT8
float64 / float32          DOUBLE / FLOAT
bool                       BOOL
=========================  =====================================

Dates and timestamps arrive as ISO-8601 text (``jinabatch.embed.columns`` converts them in the shards), so
they are VARCHARs here; their corpus type is kept in ``Column.source_type``. Nulls in carried columns are
counted (``Column.nulls``): where they go depends on the server (``jinabatch.load.target.choose_layout``).
A null id, or a column type with no Milvus scalar, is rejected with a ``LoadError`` naming the file and
column and saying what to change.
"""
from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pymilvus import DataType, MilvusClient

from ..config import StorageSettings
from ..errors import LoadError
from ..observe.report import REPORT, EmbedReport
from ..storage import Storage
from .scan import MAX_VARCHAR

__all__ = ["ShardFile", "Column", "LoadInput", "read_output", "build_schema", "VECTOR_FIELD", "MAX_VARCHAR"]

VECTOR_FIELD = "embedding"
_SCALARS = {
    pa.int64(): DataType.INT64, pa.int32(): DataType.INT32, pa.int16(): DataType.INT16, pa.int8(): DataType.INT8,
    pa.float64(): DataType.DOUBLE, pa.float32(): DataType.FLOAT, pa.bool_(): DataType.BOOL,
}
_SOURCE_TYPE = b"jinabatch.source_type"  # field metadata written by jinabatch.embed.columns
_META_KEY = b"jinabatch"


@dataclass(frozen=True)
class ShardFile:
    """One shard file of an embed output as the load reads it: ``sub`` is its path under ``storage``
    (``shards/shard-00000.parquet``), ``meta`` its footer, ``rows`` its row count."""

    storage: Storage
    sub: str
    rows: int
    meta: dict[str, Any]
    row_groups: tuple[int, ...] = ()  # rows per row group (load.verify samples across them)

    @property
    def name(self) -> str:
        return posixpath.basename(self.sub)

    @property
    def uri(self) -> str:
        """Where it is, for messages: an absolute path or ``s3://bucket/key``."""
        return self.storage.uri_of(self.sub)

    def open(self) -> pq.ParquetFile:
        return pq.ParquetFile(self.storage.open_input_file(self.sub))


@dataclass(frozen=True)
class Column:
    """A shard column as a Milvus field: its type, VARCHAR length, nulls seen, and corpus type if converted."""

    name: str
    dtype: DataType
    max_length: int | None = None  # VARCHAR only
    nulls: int = 0  # null values over all shards
    source_type: str | None = None  # the corpus type when the embed stage converted it (e.g. a timestamp)


@dataclass(frozen=True)
class LoadInput:
    """The checked output folder: everything the load needs to know before touching Milvus."""

    storage: Storage  # the output folder or prefix
    report: EmbedReport
    shards: list[ShardFile]
    id_field: Column
    columns: list[Column]  # carried columns, in shard order
    dim: int
    rows: int  # sum over shards == report["rows_embedded"]
    model: str
    task: str | None
    fingerprint: str | None = None

    @property
    def uri(self) -> str:
        return self.storage.uri


def _varchar_len(longest: int) -> int:
    """Headroom over the longest value seen (next power of two, at least 16), capped at Milvus's max."""
    n = 16
    while n < longest:
        n *= 2
    return min(n, MAX_VARCHAR)


def _read_report(out: Storage) -> EmbedReport:
    rp = out.uri_of(REPORT)
    try:
        report = out.read_json(REPORT)
    except json.JSONDecodeError as e:
        raise LoadError(f"{rp}: not valid JSON ({e}); rerun the embed stage") from None
    if report is None:
        raise LoadError(f"{rp}: no embed report; run the embed stage first (jinabatch embed CONFIG)")
    if not report.get("finished"):
        raise LoadError(f"{rp}: the embed run did not finish (finished != true); rerun the embed stage to complete it")
    for key in ("rows_embedded", "dimensions", "id_column", "model"):
        if key not in report:
            raise LoadError(f"{rp}: missing {key!r}; the folder was not written by the embed stage")
    return EmbedReport.model_validate(report)


def read_output(path: str | Path | Storage, storage: StorageSettings | None = None) -> LoadInput:
    """Open and check an embed output folder or prefix (raises LoadError naming the file and what to do;
    StorageError when the store cannot be reached)."""
    out = path if isinstance(path, Storage) else Storage.open(path, storage)
    report = _read_report(out)
    files = [f.path for f in out.list("shards", recursive=False, pattern="shard-*.parquet")]
    if not files:
        raise LoadError(f"{out.uri_of('shards')}: no shard-*.parquet files; run the embed stage first")
    dim, id_name = report.dimensions, report.id_column
    shards, first_schema = [], None
    for sub in files:
        f = out.uri_of(sub)
        try:
            pf = pq.ParquetFile(out.open_input_file(sub))
        except Exception as e:  # pyarrow raises several types for a corrupt file
            raise LoadError(f"{f}: not a readable Parquet file ({e}); delete it and rerun the embed stage") from None
        schema = pf.schema_arrow
        meta = json.loads((schema.metadata or {}).get(_META_KEY, b"{}"))
        if first_schema is None:
            first_schema = schema.remove_metadata()
            if id_name not in schema.names:
                raise LoadError(f"{f}: the id column {id_name!r} named in _report.json is missing")
            if VECTOR_FIELD not in schema.names:
                raise LoadError(f"{f}: no {VECTOR_FIELD!r} column")
            vt = schema.field(VECTOR_FIELD).type
            if not (pa.types.is_list(vt) and vt.value_type == pa.float32()):
                raise LoadError(f"{f}: column {VECTOR_FIELD!r} is {vt}; Milvus import needs list<float32>")
        elif not schema.remove_metadata().equals(first_schema):
            raise LoadError(f"{f}: columns {schema.remove_metadata()} differ from {posixpath.basename(files[0])}'s "
                            f"{first_schema}; all shards of one run must share a schema — rerun the embed stage")
        if meta.get("dimensions") not in (None, dim):
            raise LoadError(f"{f}: dimensions {meta['dimensions']} but _report.json says {dim}; "
                            "the folder mixes two runs — use a fresh output.path")
        if meta.get("model") not in (None, report.model):
            raise LoadError(f"{f}: model {meta['model']!r} but _report.json says {report.model!r}; "
                            "the folder mixes two runs — use a fresh output.path")
        md = pf.metadata
        shards.append(ShardFile(out, sub, md.num_rows, meta, tuple(md.row_group(i).num_rows
                                                                   for i in range(md.num_row_groups))))
    rows = sum(s.rows for s in shards)
    if rows != report.rows_in_shards:
        raise LoadError(f"{out.uri}: the shards hold {rows} rows but _report.json says rows_embedded = "
                        f"{report.rows_in_shards}; a shard is missing or stale — rerun the embed stage")
    id_col, columns = _scan_columns(shards, first_schema, id_name)
    return LoadInput(storage=out, report=report, shards=shards, id_field=id_col, columns=columns, dim=dim,
                     rows=rows, model=report.model, task=report.task, fingerprint=report.fingerprint or None)


def _scan_columns(shards: list[ShardFile], schema: pa.Schema, id_name: str) -> tuple[Column, list[Column]]:
    """Map each non-vector column to a Milvus type; size VARCHARs and check ids are unique."""
    strings = [n for n in schema.names if n != VECTOR_FIELD
               and (pa.types.is_string(schema.field(n).type) or pa.types.is_large_string(schema.field(n).type))]
    longest = {n: 0 for n in strings}
    id_type = schema.field(id_name).type
    if not (pa.types.is_string(id_type) or pa.types.is_large_string(id_type) or id_type == pa.int64()):
        raise LoadError(f"{shards[0].uri}: id column {id_name!r} is {id_type}; a Milvus primary key must be a "
                        "string or int64 — cast corpus.id_column in the corpus")
    for name in schema.names:
        t = schema.field(name).type
        if name in (id_name, VECTOR_FIELD) or name in longest or t in _SCALARS:
            continue
        raise LoadError(f"{shards[0].uri}: column {name!r} is {t}, which has no Milvus scalar type; "
                        "drop it from corpus.columns or cast it to string, int64, int32, float64, float32 or bool")
    nulls = {n: 0 for n in schema.names if n not in (id_name, VECTOR_FIELD)}
    ids = []
    for s in shards:
        table = s.open().read(columns=[id_name, *[n for n in schema.names if n not in (id_name, VECTOR_FIELD)]])
        for name in table.column_names:
            col = table.column(name)
            if col.null_count and name == id_name:
                raise LoadError(f"{s.uri}: id column {name!r} has {col.null_count} null value(s); a primary key "
                                "cannot be null — the shard was not written by the embed stage (it dead-letters "
                                "null ids): rerun it")
            if name != id_name:
                nulls[name] += col.null_count
            if name in longest and len(col):
                longest[name] = max(longest[name], pc.max(pc.binary_length(col)).as_py() or 0)
        ids.append(table.column(id_name))
    all_ids = pa.chunked_array([c for ch in ids for c in ch.chunks], type=id_type)
    if len(pc.unique(all_ids)) != len(all_ids):
        counts = pc.value_counts(all_ids)
        dup = next(v["values"] for v in counts.to_pylist() if v["counts"] > 1)
        raise LoadError(f"{shards[0].storage.uri_of('shards')}: id {dup!r} appears more than once; Milvus import "
                        "never dedups — make corpus.id_column unique and rerun the embed stage")
    for name, n in longest.items():
        if n > MAX_VARCHAR:
            raise LoadError(f"{shards[0].storage.uri_of('shards')}: column {name!r} holds a value of {n} bytes; "
                            f"Milvus VARCHAR holds at most {MAX_VARCHAR} — shorten it or drop it from corpus.columns")

    def col(name: str) -> Column:
        src = (schema.field(name).metadata or {}).get(_SOURCE_TYPE)
        extra = {"nulls": nulls.get(name, 0), "source_type": src.decode() if src else None}
        if name in longest:
            return Column(name, DataType.VARCHAR, _varchar_len(longest[name]), **extra)
        t = schema.field(name).type
        return Column(name, DataType.INT64 if name == id_name else _SCALARS[t], **extra)

    return col(id_name), [col(n) for n in schema.names if n not in (id_name, VECTOR_FIELD)]


def build_schema(inp: LoadInput, description: str = "", layout: Any = None) -> Any:
    """The CollectionSchema for a load: primary key, the vector field, then the carried columns.

    ``layout`` (``jinabatch.load.target.Layout``): which carried columns are typed fields (declared nullable
    when ``layout.nullable``) and which are keys of the dynamic field (enabled only then). Default: all typed.
    """
    typed = set(layout.typed) if layout is not None else {c.name for c in inp.columns}
    nullable = bool(layout is not None and layout.nullable)
    dynamic = bool(layout is not None and layout.dynamic)
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=dynamic, description=description)
    schema.add_field(inp.id_field.name, inp.id_field.dtype, is_primary=True,
                     **({"max_length": inp.id_field.max_length} if inp.id_field.dtype == DataType.VARCHAR else {}))
    schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=inp.dim)
    for c in inp.columns:
        if c.name not in typed:
            continue
        kw = {"max_length": c.max_length} if c.dtype == DataType.VARCHAR else {}
        schema.add_field(c.name, c.dtype, **kw, **({"nullable": True} if nullable else {}))
    return schema

"""Import copies for servers without nullable fields: the dynamic-field columns folded into ``$meta``.

Milvus bulk import reads a Parquet file as it is: every column must be a field of the collection, and a
dynamic field is fed by one ``$meta`` column of JSON-object strings. On a server without nullable fields
(Milvus 2.3 / 2.4) the carried columns that hold nulls are keys of the dynamic field, so their shard columns
cannot be imported directly — Milvus 2.3.5 would even import a Parquet null into a plain field as 0 or "".

``write_import_copies`` streams each shard into ``{output}/_import/{collection}/shard-NNNNN.parquet``: the id,
the vector and the typed columns unchanged, and ``$meta`` holding, per row, the dynamic columns' non-null
values (``{}`` when all are null: Milvus refuses a null ``$meta``). The copies are removed when the load ends,
whatever the outcome. They need the server to read this machine's files (local storage); with
``milvus.import_root`` (a server reading its own bucket) the stage inserts instead.
"""
from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import LoadError
from .schema import Shard

__all__ = ["DYNAMIC_FIELD", "import_copies", "meta_json", "dynamic_values"]

DYNAMIC_FIELD = "$meta"
READ_ROWS = 8192


def dynamic_values(rb: pa.RecordBatch, dynamic: Sequence[str]) -> list[dict]:
    """Per row, the non-null values of the ``dynamic`` columns (a null is an absent key)."""
    cols = {n: rb.column(n).to_pylist() for n in dynamic}
    return [{n: v[i] for n, v in cols.items() if v[i] is not None} for i in range(rb.num_rows)]


def meta_json(values: dict, where: str) -> str:
    for k, v in values.items():
        if isinstance(v, float) and not math.isfinite(v):
            raise LoadError(f"{where}: column {k!r} holds {v}, which Milvus cannot store; the embed stage writes "
                            "NaN as null — rerun it, or fix the value in the corpus")
    return json.dumps(values, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _copy(shard: Shard, dest: Path, dynamic: Sequence[str]) -> Path:
    pf = pq.ParquetFile(shard.path)
    keep = [n for n in pf.schema_arrow.names if n not in dynamic]
    schema = pa.schema([*(pf.schema_arrow.field(n) for n in keep), pa.field(DYNAMIC_FIELD, pa.string())])
    out = dest / shard.path.name
    with pq.ParquetWriter(out, schema) as w:
        for rb in pf.iter_batches(batch_size=READ_ROWS):
            meta = [meta_json(v, str(shard.path)) for v in dynamic_values(rb, dynamic)]
            w.write_batch(pa.record_batch([*(rb.column(n) for n in keep), pa.array(meta, pa.string())],
                                          schema=schema))
    return out


@contextmanager
def import_copies(shards: Sequence[Shard], root: Path, collection: str,
                  dynamic: Sequence[str]) -> Iterator[list[Shard]]:
    """The shards as import copies under ``root/_import/collection`` for the block; removed after it."""
    dest = root / "_import" / collection
    dest.mkdir(parents=True, exist_ok=True)
    try:
        yield [Shard(_copy(s, dest, dynamic), s.rows, s.meta) for s in shards]
    finally:
        shutil.rmtree(dest, ignore_errors=True)
        try:
            dest.parent.rmdir()  # only if no other load is using it
        except OSError:
            pass

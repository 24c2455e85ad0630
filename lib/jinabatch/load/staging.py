"""Import copies for servers without nullable fields: the dynamic-field columns folded into ``$meta``.

Milvus bulk import reads a Parquet file as it is: every column must be a field of the collection, and a
dynamic field is fed by one ``$meta`` column of JSON-object strings. On a server without nullable fields
(Milvus 2.3 / 2.4) the carried columns that hold nulls are keys of the dynamic field, so their shard columns
cannot be imported directly — Milvus 2.3.5 would even import a Parquet null into a plain field as 0 or "".

``write_meta_copy`` streams a shard into an import copy: the id, the vector and the typed columns unchanged,
and ``$meta`` holding, per row, the dynamic columns' non-null values (``{}`` when all are null: Milvus refuses
a null ``$meta``). Where the copies go — beside the output, or into the Milvus server's bucket — and their
removal after the load are ``jinabatch.load.importfiles``'s business.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import LoadError
from ..storage import Storage
from .schema import ShardFile

__all__ = ["DYNAMIC_FIELD", "write_meta_copy", "meta_json", "dynamic_values"]

DYNAMIC_FIELD = "$meta"
READ_ROWS = 8192


def dynamic_values(rb: pa.RecordBatch, dynamic: Sequence[str]) -> list[dict]:
    """Per row, the non-null values of the ``dynamic`` columns (a null is an absent key)."""
    cols = {n: rb.column(n).to_pylist() for n in dynamic}
    return [{n: v[i] for n, v in cols.items() if v[i] is not None} for i in range(rb.num_rows)]


def meta_json(values: dict, where: str) -> str:
    """The ``$meta`` value of one row: its non-null dynamic-field ``values`` as a JSON object (``where`` names the row
    in errors)."""
    for k, v in values.items():
        if isinstance(v, float) and not math.isfinite(v):
            raise LoadError(f"{where}: column {k!r} holds {v}, which Milvus cannot store; the embed stage writes "
                            "NaN as null — rerun it, or fix the value in the corpus")
    return json.dumps(values, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def write_meta_copy(shard: ShardFile, dest: Storage, sub: str, dynamic: Sequence[str]) -> None:
    """Write ``shard`` to ``dest``/``sub`` as an import copy: the ``dynamic`` columns folded into ``$meta``.
    Built in a local file first and moved/uploaded once, so the copy appears complete or not at all."""
    pf = shard.open()
    keep = [n for n in pf.schema_arrow.names if n not in dynamic]
    schema = pa.schema([*(pf.schema_arrow.field(n) for n in keep), pa.field(DYNAMIC_FIELD, pa.string())])
    tmp = dest.local_temp(sub)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        with pq.ParquetWriter(tmp, schema) as w:
            for rb in pf.iter_batches(batch_size=READ_ROWS):
                meta = [meta_json(v, shard.uri) for v in dynamic_values(rb, dynamic)]
                w.write_batch(pa.record_batch([*(rb.column(n) for n in keep), pa.array(meta, pa.string())],
                                              schema=schema))
        dest.upload(tmp, sub)
    finally:
        tmp.unlink(missing_ok=True)

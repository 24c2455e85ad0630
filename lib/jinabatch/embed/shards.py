"""Shard output: one Parquet file per shard, complete or absent; dead letters; the manifest.

Layout of ``output.path``::

    shards/shard-00000.parquet        id column, embedding list<float32>, carried columns; footer metadata
    dead_letter/shard-00000.parquet   id, source_file, row, reason, text — rows that were not embedded
    _manifest.json                    the plan and each shard's state, rewritten atomically by the driver
    _report.json                      the run's counts and rates (jinabatch.embed.report)

A shard is written to ``shard-NNNNN.parquet.tmp-<attempt>`` and renamed when complete, after its dead-letter
file, so a shard file that exists is a finished shard (a killed worker leaves only a temp file, which the
next attempt removes). The footer's ``jinabatch`` key says what produced it; a rerun skips a shard whose
footer matches the plan and the config fingerprint. The API key is never written anywhere here.
"""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .columns import shard_fields, to_shard

__all__ = ["ShardWriter", "write_dead_letter", "read_shard_meta", "shard_path", "dead_letter_path",
           "write_json_atomic", "read_json", "embedding_array", "DEAD_LETTER_SCHEMA_FIELDS"]

META_KEY = b"jinabatch"
DEAD_LETTER_SCHEMA_FIELDS = ("id", "source_file", "row", "reason", "text")


def shard_path(out: str | Path, name: str) -> Path:
    return Path(out) / "shards" / f"{name}.parquet"


def dead_letter_path(out: str | Path, name: str) -> Path:
    return Path(out) / "dead_letter" / f"{name}.parquet"


def embedding_array(vectors: np.ndarray) -> pa.ListArray:
    """(n, d) float32 → list<float32> (what Milvus import accepts), without copying row by row."""
    v = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = v.shape
    offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(v.reshape(-1)))


def _clean_stale(final: Path) -> None:
    for stale in final.parent.glob(final.name + ".tmp-*"):
        stale.unlink(missing_ok=True)


class ShardWriter:
    """Streams one shard's rows to a temp file; ``commit`` renames it into place."""

    def __init__(self, out: str | Path, name: str, id_field: pa.Field, carried: list[pa.Field], meta: dict[str, Any]):
        self.final = shard_path(out, name)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        _clean_stale(self.final)
        self.tmp = self.final.with_name(f"{self.final.name}.tmp-{uuid.uuid4().hex[:8]}")
        id_field, carried = shard_fields(id_field, carried)  # hook (issue 14): Milvus-holdable types
        self.schema = pa.schema([id_field, pa.field("embedding", pa.list_(pa.float32())), *carried])
        self.meta = dict(meta)
        self.rows = 0
        self._writer = pq.ParquetWriter(self.tmp, self.schema)

    def write(self, ids: pa.Array, vectors: np.ndarray, carried: list[pa.Array]) -> None:
        if len(ids) == 0:
            return
        carried = [to_shard(a) for a in carried]  # hook (issue 14): dates → ISO text, NaN → null, ...
        batch = pa.record_batch([ids.cast(self.schema.field(0).type), embedding_array(vectors), *carried],
                                schema=self.schema)
        self._writer.write_batch(batch)
        self.rows += len(ids)

    def commit(self, **extra: Any) -> Path:
        self.meta.update(extra, rows=self.rows)
        self._writer.add_key_value_metadata({META_KEY: json.dumps(self.meta, sort_keys=True).encode()})
        self._writer.close()
        os.replace(self.tmp, self.final)
        return self.final

    def abort(self) -> None:
        try:
            self._writer.close()
        finally:
            self.tmp.unlink(missing_ok=True)


def write_dead_letter(out: str | Path, name: str, rows: list[dict[str, Any]], id_type: pa.DataType) -> Path | None:
    """Write a shard's dead letters atomically (or remove an old file when there are none)."""
    final = dead_letter_path(out, name)
    if not rows:
        final.unlink(missing_ok=True)
        return None
    final.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({
        "id": pa.array([r["id"] for r in rows], type=id_type),
        "source_file": pa.array([r["source_file"] for r in rows], type=pa.string()),
        "row": pa.array([r["row"] for r in rows], type=pa.int64()),
        "reason": pa.array([r["reason"] for r in rows], type=pa.string()),
        "text": pa.array([r["text"] for r in rows], type=pa.string()),
    })
    tmp = final.with_name(f"{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    pq.write_table(table, tmp)
    os.replace(tmp, final)
    return final


def read_shard_meta(path: str | Path) -> dict[str, Any] | None:
    """The footer metadata of a finished shard, or None if absent/unreadable."""
    try:
        md = pq.read_metadata(path).metadata or {}
        return json.loads(md[META_KEY])
    except (OSError, KeyError, ValueError, pa.ArrowInvalid):
        return None


def write_json_atomic(path: str | Path, data: Any) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    os.replace(tmp, p)


def read_json(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None

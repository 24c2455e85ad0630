"""From ``corpus.path`` to a plan of shards, checked before any API call.

``plan(config)`` lists the Parquet files (a file, a folder searched recursively, or a glob), opens each
one's footer to check it is Parquet and has the id, text and carried columns with usable types, then
cuts every file into shards of whole row groups holding about ``rows_per_shard`` rows. Duplicate ids are
found across the whole corpus up front (one pass over the id column only): the first occurrence wins and
every later one is marked for the dead-letter file with where the first one is.

Anything wrong with the input raises ``CorpusError`` naming the file and what to do; no request has
been sent at that point.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..config import CorpusSettings
from ..errors import CorpusError
from .columns import check_carried_type, check_id_type

__all__ = ["Shard", "Plan", "list_files", "plan_corpus", "file_fingerprint"]

CARRIED_TYPES = (pa.string(), pa.large_string(), pa.int64(), pa.int32(), pa.int16(), pa.int8(),
                 pa.float64(), pa.float32(), pa.bool_())


@dataclass(frozen=True)
class Shard:
    """Rows ``[row_start, row_stop)`` of ``file``, made of row groups ``[rg_start, rg_stop)``."""

    index: int
    file: str
    rg_start: int
    rg_stop: int
    row_start: int
    row_stop: int
    file_fingerprint: str
    # row (index in file) -> why it is a duplicate, e.g. "duplicate id (first at a.parquet row 3)"
    duplicates: dict[int, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def rows(self) -> int:
        return self.row_stop - self.row_start

    @property
    def name(self) -> str:
        return f"shard-{self.index:05d}"


@dataclass
class Plan:
    files: list[str]
    shards: list[Shard]
    id_type: pa.DataType
    column_types: dict[str, pa.DataType]

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)


def file_fingerprint(path: str) -> str:
    st = os.stat(path)
    return f"{st.st_size}-{st.st_mtime_ns}"


def list_files(path: str, exclude: str | Path | None = None) -> list[str]:
    """The corpus files for ``corpus.path``, sorted, as absolute paths (none under ``exclude``)."""
    p = Path(path)
    if p.is_file():
        files = [p]
    elif p.is_dir():
        files = [f for f in p.rglob("*") if f.is_file() and not f.name.startswith((".", "_"))]
    else:
        files = [Path(f) for f in glob.glob(path, recursive=True) if Path(f).is_file()]
    if exclude is not None:  # the job's own output folder may sit inside the corpus folder
        ex = Path(exclude).resolve()
        files = [f for f in files if not f.resolve().is_relative_to(ex)]
    if not files:
        raise CorpusError(f"corpus.path = {path!r}: no files found (give a Parquet file, a folder of them, or a glob)")
    return sorted(str(f.resolve()) for f in files)


def _open(path: str) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except PermissionError as e:
        raise CorpusError(f"{path}: cannot read the file ({e.strerror}); fix its permissions") from None
    except (pa.ArrowInvalid, OSError) as e:
        raise CorpusError(f"{path}: not a readable Parquet file ({e}); remove it from corpus.path "
                          "or convert it to Parquet") from None


def _check_schema(path: str, schema: pa.Schema, cs: CorpusSettings) -> None:
    names = schema.names
    for key, col in [("corpus.id_column", cs.id_column), ("corpus.text_column", cs.text_column),
                     *[("corpus.columns", c) for c in cs.columns]]:
        if col not in names:
            raise CorpusError(f"{path}: column {col!r} ({key}) not found; the file has {names}")
    text_t = schema.field(cs.text_column).type
    if not (pa.types.is_string(text_t) or pa.types.is_large_string(text_t)):
        raise CorpusError(f"{path}: text column {cs.text_column!r} is {text_t}, expected a string column")
    id_t = schema.field(cs.id_column).type
    if not (pa.types.is_string(id_t) or pa.types.is_large_string(id_t) or pa.types.is_integer(id_t)):
        raise CorpusError(f"{path}: id column {cs.id_column!r} is {id_t}, expected string or integer ids")
    check_id_type(path, cs.id_column, id_t)  # hook (issue 14): type rules live in embed/columns.py
    for c in cs.columns:
        check_carried_type(path, c, schema.field(c).type)  # hook (issue 14): dates, timestamps, unsigned...


def _find_duplicates(files: list[str], id_column: str) -> dict[str, dict[int, str]]:
    """file -> {row: reason} for every occurrence of an id after its first, across all files."""
    parts, file_idx, rows = [], [], []
    for i, f in enumerate(files):
        col = pq.read_table(f, columns=[id_column]).column(id_column).combine_chunks()
        parts.append(col)
        file_idx.append(np.full(len(col), i, dtype=np.int32))
        rows.append(np.arange(len(col), dtype=np.int64))
    if not parts:
        return {}
    ids = pa.chunked_array(parts).combine_chunks() if len({p.type for p in parts}) == 1 else None
    if ids is None:
        raise CorpusError(f"the id column {id_column!r} has different types across files: "
                          f"{sorted({str(p.type) for p in parts})}; make them the same")
    pos = np.arange(len(ids), dtype=np.int64)
    t = pa.table({"id": ids, "pos": pos})
    counts = t.group_by("id").aggregate([("pos", "min"), ("pos", "count")])
    dup = counts.filter(pc.greater(counts["pos_count"], 1))
    if dup.num_rows == 0:
        return {}
    first = dict(zip(dup["id"].to_pylist(), dup["pos_min"].to_pylist()))
    fidx, rws = np.concatenate(file_idx), np.concatenate(rows)
    mask = pc.is_in(ids, value_set=dup["id"]).to_numpy(zero_copy_only=False)
    out: dict[str, dict[int, str]] = {}
    for p in np.flatnonzero(mask):
        first_pos = first[ids[int(p)].as_py()]
        if p == first_pos:
            continue
        where = f"{Path(files[fidx[first_pos]]).name} row {rws[first_pos]}"
        out.setdefault(files[fidx[p]], {})[int(rws[p])] = f"duplicate id (first at {where})"
    return out


def plan_corpus(cs: CorpusSettings, *, exclude: str | Path | None = None) -> Plan:
    """Check every file and cut the corpus into shards. Raises CorpusError before any API call.

    ``exclude``: a folder whose files are never corpus (the output folder, when it sits inside the corpus).
    """
    files = list_files(cs.path, exclude)
    metas = {}
    id_type, column_types = None, {}
    for f in files:
        pf = _open(f)
        schema = pf.schema_arrow
        _check_schema(f, schema, cs)
        t = schema.field(cs.id_column).type
        if id_type is None:
            id_type = t
            column_types = {c: schema.field(c).type for c in cs.columns}
        else:  # one output schema for all shards: a column typed differently in a later file fails here, not mid-run
            for c, want in [(cs.id_column, id_type), *column_types.items()]:
                got = schema.field(c).type
                if got != want:
                    raise CorpusError(f"{f}: column {c!r} is {got} but {want} in {files[0]}; "
                                      "give it the same type in every file")
        metas[f] = pf.metadata
    dups = _find_duplicates(files, cs.id_column)
    shards: list[Shard] = []
    for f in files:
        md, fp = metas[f], file_fingerprint(f)
        rg, row = 0, 0
        while rg < md.num_row_groups:
            start_rg, start_row, n = rg, row, 0
            while rg < md.num_row_groups and (n == 0 or n + md.row_group(rg).num_rows <= cs.rows_per_shard):
                n += md.row_group(rg).num_rows
                rg += 1
            row += n
            if n == 0:
                continue
            d = {r: why for r, why in dups.get(f, {}).items() if start_row <= r < row}
            shards.append(Shard(len(shards), f, start_rg, rg, start_row, row, fp, d))
    return Plan(files, shards, id_type or pa.string(), column_types)

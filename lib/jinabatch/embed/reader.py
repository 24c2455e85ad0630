"""A shard's rows, read piece by piece, in corpus order, in record batches.

A piece is a row range of one file. Only the row groups that overlap it are read, in batches of
``batch_rows``; a batch that straddles the range's edge is sliced, and reading stops once past the range, so
a shard cut from the middle of a 200,000-row row group decodes at most that row group once. Carried columns
that come from a Hive-style path (``lang=en/``) are added as constant columns of the planned type.

Each batch comes with where it is from — the file, the row of its first row in that file, and its first row's
position in the whole corpus — so dead letters name file and row, and duplicates are found by position.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from ..config import StorageSettings
from ..errors import CorpusError
from ..storage import Storage
from .plan import Piece, Shard

__all__ = ["RowBatch", "read_shard"]


@dataclass
class RowBatch:
    """A batch of a shard's rows and where they are from (see the module docstring)."""

    table: pa.Table
    file: str  # uri of the file the rows come from
    row0: int  # row of the first row within that file
    pos0: int  # position of the first row in the corpus


def _open(piece: Piece, settings: StorageSettings) -> pq.ParquetFile:
    parent, _, name = piece.file.rpartition("/")
    store = Storage.open(parent or "/", settings)
    st = store.stat(name)
    if st is None or st.fingerprint != piece.fingerprint:
        raise CorpusError(f"{piece.file}: the file changed or disappeared since the plan was made; rerun the job "
                          "to plan the corpus again")
    return pq.ParquetFile(store.open_input_file(name))


def read_shard(shard: Shard, columns: list[str], types: dict[str, pa.DataType], settings: StorageSettings, *,
               batch_rows: int = 1024) -> Iterator[RowBatch]:
    """Batches of ``columns`` (id, text, carried) for the shard's rows; ``types`` gives path columns' types."""
    pos = shard.start
    for piece in shard.pieces:
        pf = _open(piece, settings)
        md = pf.metadata
        in_file = [c for c in columns if c in pf.schema_arrow.names]
        groups, first_row, r = [], None, 0
        for i in range(md.num_row_groups):
            n = md.row_group(i).num_rows
            if r < piece.row_stop and r + n > piece.row_start:
                groups.append(i)
                first_row = r if first_row is None else first_row
            r += n
        row = first_row or 0
        for rb in pf.iter_batches(batch_size=batch_rows, row_groups=groups, columns=in_file):
            lo, hi = max(row, piece.row_start), min(row + rb.num_rows, piece.row_stop)
            if hi > lo:
                table = pa.Table.from_batches([rb.slice(lo - row, hi - lo)])
                for c, v in piece.partition:
                    if c in columns and c not in table.column_names:
                        table = table.append_column(pa.field(c, types[c]), pa.array([v] * (hi - lo), types[c]))
                yield RowBatch(table, piece.file, lo, pos)
                pos += hi - lo
            row += rb.num_rows
            if row >= piece.row_stop:
                break

"""A shard's rows, read piece by piece, in corpus order, in record batches.

A piece is a row range of one file. Only the row groups that overlap a piece are read, each once, in batches of
``batch_rows``; a batch that straddles a range's edge is sliced, so a shard cut from the middle of a 200,000-row
row group decodes at most that row group once. A delta's shard (``Shard.sparse``) is many small pieces — the rows
the plan's join marked new or changed — read with one open per file and no row group that holds none of them.
Carried columns that come from a Hive-style path (``lang=en/``) are added as constant columns of the planned type.

Each batch comes with where it is from — the file, the row of its first row in that file, and its first row's
position in the whole corpus — so dead letters name file and row, and duplicates are found by position.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import groupby

import pyarrow as pa
import pyarrow.parquet as pq

from ..config import StorageSettings
from ..errors import CorpusError
from ..storage import Storage
from .plan import Piece, Shard

__all__ = ["RowBatch", "read_shard", "read_pieces"]


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


def read_pieces(pieces: Sequence[tuple[Piece, int]], columns: list[str], types: dict[str, pa.DataType],
                settings: StorageSettings, *, batch_rows: int = 1024) -> Iterator[RowBatch]:
    """Batches of ``columns`` for ``pieces`` (each with the corpus position of its first row), in order. Consecutive
    pieces of one file (sorted by row) share one open; only the row groups that hold some piece's rows are decoded,
    each once, in record batches of ``batch_rows``."""
    for _, run in groupby(pieces, key=lambda pp: pp[0].file):
        run = list(run)
        pf = _open(run[0][0], settings)
        md = pf.metadata
        in_file = [c for c in columns if c in pf.schema_arrow.names]
        k, first = 0, 0  # the first piece not wholly behind the rows read so far; the row group's first row
        for rg in range(md.num_row_groups):
            end = first + md.row_group(rg).num_rows
            while k < len(run) and run[k][0].row_stop <= first:
                k += 1
            if k == len(run):
                break
            if run[k][0].row_start >= end:  # no piece has rows here
                first = end
                continue
            row = first
            for rb in pf.iter_batches(batch_size=batch_rows, row_groups=[rg], columns=in_file):
                stop = row + rb.num_rows
                j = k
                while j < len(run) and run[j][0].row_start < stop:
                    piece, pos0 = run[j]
                    lo, hi = max(row, piece.row_start), min(stop, piece.row_stop)
                    if hi > lo:
                        yield RowBatch(_with_partition(pa.Table.from_batches([rb.slice(lo - row, hi - lo)]), piece,
                                                       columns, types), piece.file, lo, pos0 + lo - piece.row_start)
                    j += 1
                row = stop
            first = end


def _with_partition(table: pa.Table, piece: Piece, columns: list[str], types: dict[str, pa.DataType]) -> pa.Table:
    for c, v in piece.partition:
        if c in columns and c not in table.column_names:
            table = table.append_column(pa.field(c, types[c]), pa.array([v] * table.num_rows, types[c]))
    return table


def read_shard(shard: Shard, columns: list[str], types: dict[str, pa.DataType], settings: StorageSettings, *,
               batch_rows: int = 1024) -> Iterator[RowBatch]:
    """Batches of ``columns`` (id, text, carried) for the shard's rows; ``types`` gives path columns' types."""
    pos, pieces = shard.start, []
    for piece in shard.pieces:
        pieces.append((piece, pos))
        pos += piece.rows
    return read_pieces(pieces, columns, types, settings, batch_rows=batch_rows)

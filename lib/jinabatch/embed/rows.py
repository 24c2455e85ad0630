"""A shard's rows on their way through a worker: read in groups, waiting for their vectors, written out.

* ``ShardInput.open`` — what a worker reads for one shard: the plan's duplicates and reuse for its range, the
  previous output's vectors (incremental runs), and its rows — for a delta's shard only the rows its to-do list
  names (``Shard.sparse``) — in groups of at least ``READ_BATCH_ROWS``
  (small pieces — tiny files, a range's edge — are packed together, so requests don't follow file shapes); under
  late chunking the whole shard is one group, since a document's chunks must meet in one request.
* ``PendingRows`` — one group waiting for its vectors, knowing each row's file, row in that file and corpus
  position (dead letters name file and row; duplicates and reuse are found by position).
* ``ShardOutput`` — where finished groups go, in input order: embedded rows into the ``ShardWriter``, the others
  into the dead-letter file with their reason; the counts in a ``ShardResult``, which must reconcile before the
  shard is committed.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from ..config import Config, CorpusSettings
from ..errors import JinaBatchError
from ..storage import Storage
from .corpus import CorpusFile
from .dedup import read_duplicates
from .incremental import PrevVectors, read_reuse, read_todo, text_hashes
from .passes import locate
from .plan import Piece, Shard, read_files
from .reader import RowBatch, read_pieces, read_shard
from .result import ShardResult
from .shards import ShardWriter, write_dead_letter
from .triage import reason_key

__all__ = ["ShardInput", "PendingRows", "ShardOutput", "READ_BATCH_ROWS"]

READ_BATCH_ROWS = 1024


def _at_least(batches: Iterator[RowBatch], rows: int) -> Iterator[list[RowBatch]]:
    """Consecutive record batches grouped until each group holds at least ``rows`` rows (the last may hold less)."""
    group: list[RowBatch] = []
    n = 0
    for rb in batches:
        group.append(rb)
        n += rb.table.num_rows
        if n >= rows:
            yield group
            group, n = [], 0
    if group:
        yield group


class PendingRows:
    """Rows waiting for their vectors: written in order once all are back. ``ids`` / ``texts`` are the id and
    text columns as Python values; ``positions`` their corpus positions (consecutive, but for a delta's rows)."""

    def __init__(self, parts: list[RowBatch], cs: CorpusSettings):
        self.table = parts[0].table if len(parts) == 1 else pa.concat_tables([p.table for p in parts])
        self._parts = parts
        self._starts = np.cumsum([0] + [p.table.num_rows for p in parts[:-1]])
        self.ids: list[Any] = self.table.column(cs.id_column).to_pylist()
        self.texts: list[str | None] = self.table.column(cs.text_column).to_pylist()
        contiguous = all(a.pos0 + a.table.num_rows == b.pos0 for a, b in zip(parts, parts[1:]))
        self.positions: range | list[int] = range(parts[0].pos0, parts[0].pos0 + self.table.num_rows) if contiguous \
            else [p.pos0 + k for p in parts for k in range(p.table.num_rows)]
        self.vectors: dict[int, np.ndarray] = {}
        self.dead: dict[int, str] = {}
        self.tasks: list[asyncio.Task] = []  # the requests its rows are in
        self.held = 0  # rows waiting in a request not sent yet (the packer's carry)

    def _part(self, i: int) -> tuple[RowBatch, int]:
        k = int(np.searchsorted(self._starts, i, side="right")) - 1
        return self._parts[k], i - int(self._starts[k])

    def file(self, i: int) -> str:
        return self._part(i)[0].file

    def row(self, i: int) -> int:
        """Row ``i``'s row in its file."""
        part, off = self._part(i)
        return part.row0 + off

    def where(self, i: int) -> str:
        """``file row N (id X)``: row ``i`` for a message."""
        return f"{self.file(i)} row {self.row(i)} (id {self.ids[i]!r})"


@dataclass
class ShardInput:
    """What a worker reads for one shard (``open``): ``groups`` of record batches, and by corpus position the
    later duplicates (-> reason) and the rows carried over (-> location in ``previous``)."""

    groups: Iterator[list[RowBatch]]
    duplicates: dict[int, str]
    reuse: dict[int, int]
    previous: PrevVectors | None

    @classmethod
    def open(cls, config: Config, shard: Shard, out: Storage, carried: list[pa.Field]) -> "ShardInput":
        """Read the plan's duplicates and reuse for ``shard`` and start reading its rows (``carried``: the planned
        types of the carried columns)."""
        cs = config.corpus
        late = config.jina.late_chunking
        extra = [c for c in (cs.document_column, cs.chunk_order_column) if late and c]
        columns = list(dict.fromkeys([cs.id_column, cs.text_column, *cs.columns, *extra]))
        types = {f.name: f.type for f in carried}
        if shard.sparse:  # a delta's shard: the rows its to-do list names, none of them reused
            pos = read_todo(out, shard.start, shard.stop)
            batches = read_pieces(_pieces(read_files(out), pos), columns, types, config.storage,
                                  batch_rows=READ_BATCH_ROWS)
            duplicates = read_duplicates(out, int(pos[0]), int(pos[-1]) + 1) if len(pos) else {}
            return cls(_at_least(batches, READ_BATCH_ROWS), duplicates, {}, None)
        reuse = read_reuse(out, shard.start, shard.stop)
        batches = read_shard(shard, columns, types, config.storage, batch_rows=READ_BATCH_ROWS)
        if late:  # a document's chunks must meet in one request: the whole shard is one group
            parts = list(batches)
            groups = iter([parts] if parts else [])
        else:
            groups = _at_least(batches, READ_BATCH_ROWS)
        copy = reuse and config.output.write == "full"  # a delta leaves unchanged rows out instead
        return cls(groups, read_duplicates(out, shard.start, shard.stop), reuse,
                   PrevVectors(config.output.previous, config.storage) if copy else None)

    async def next_group(self, cs: CorpusSettings) -> PendingRows | None:
        """The next group, read in a thread (a file open or an object-store round trip overlaps the requests
        in flight); None at the end."""
        parts = await asyncio.to_thread(next, self.groups, None)
        return None if parts is None else PendingRows(parts, cs)


def _pieces(files: list[CorpusFile], positions: np.ndarray) -> list[tuple[Piece, int]]:
    """Sorted corpus positions → the runs of consecutive rows of one file they make, each with its first position."""
    which, rows = locate(files, positions)
    if not len(positions):
        return []
    cut = np.flatnonzero((np.diff(positions) != 1) | (np.diff(which) != 0)) + 1
    out = []
    for lo, hi in zip(np.r_[0, cut], np.r_[cut, len(positions)]):
        f = files[int(which[lo])]
        out.append((Piece(f.uri, f.fingerprint, int(rows[lo]), int(rows[hi - 1]) + 1, f.partition), int(positions[lo])))
    return out


class ShardOutput:
    """A shard's finished rows, in input order: the shard file (``ShardWriter``), its dead letters and its counts.
    ``on_rows(n)`` hears of every ``n`` rows written or dead-lettered."""

    def __init__(self, out: Storage, shard: Shard, id_field: pa.Field, carried: list[pa.Field], meta: dict[str, Any],
                 cs: CorpusSettings, on_rows: Callable[[int], None] | None = None):
        self.out, self.shard, self.id_type, self.cs, self.on_rows = out, shard, id_field.type, cs, on_rows
        self.writer = ShardWriter(out, shard.name, id_field, carried, meta)
        self.dead_rows: list[dict[str, Any]] = []
        self.result = ShardResult(shard=shard.index, name=shard.name, rows_in=shard.rows)

    def write(self, b: PendingRows) -> None:
        """Rows of ``b`` with a vector to the shard, the dead ones to the dead letters (every row is one or the other)."""
        res, cs = self.result, self.cs
        for i, why in sorted(b.dead.items()):
            self.dead_rows.append({"id": b.ids[i], "source_file": b.file(i), "row": b.row(i), "reason": why,
                                   "text": b.texts[i]})
            res.reasons[reason_key(why)] = res.reasons.get(reason_key(why), 0) + 1
        good = np.array(sorted(b.vectors), dtype=np.int64)
        if len(good):
            sub = b.table.take(pa.array(good))
            vecs = np.stack([b.vectors[int(i)] for i in good])
            self.writer.write(sub.column(cs.id_column).combine_chunks(), vecs,
                              [sub.column(c).combine_chunks() for c in cs.columns],
                              text_hashes(sub.column(cs.text_column)))
        res.rows_embedded += len(good)
        res.rows_dead_letter += len(b.dead)
        if self.on_rows:
            self.on_rows(len(good) + len(b.dead))

    def commit(self) -> ShardResult:
        """Check that the counts reconcile, then write the dead letters and move the shard file into place."""
        res = self.result
        if res.rows_embedded + res.rows_dead_letter != self.shard.rows:
            raise JinaBatchError(f"{self.shard.name}: {res.rows_embedded} rows embedded + {res.rows_dead_letter} "
                                 f"dead-lettered is not the {self.shard.rows} rows it holds; nothing was written "
                                 "(a bug: please report it with the shard's pieces)")
        write_dead_letter(self.out, self.shard.name, self.dead_rows, self.id_type)
        # counts a resumed run reports for this shard without reading its dead letters
        self.writer.commit(reasons=res.reasons, rows_embedded=res.rows_embedded,
                           **{k: getattr(res, k) for k in res.KEPT})
        return res

    def abort(self) -> None:
        self.writer.abort()

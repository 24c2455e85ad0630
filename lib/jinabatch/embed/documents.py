"""Late chunking's part of the plan: every document whole in one shard, found once at plan time.

Under ``jina.late_chunking`` a chunk's vector depends on the other chunks of its document sent with it, so a
document must never be split between two shards (each would embed its part without the other's context). A
shard is a contiguous range of corpus rows (file order, then row), so:

* **each document's rows must be consecutive in corpus order** — no other row between them, a row without a
  document included; the chunks may be in any order among themselves when ``corpus.chunk_order_column`` is
  set. A document that is not is refused here, naming it, where its rows start and end, and the fix (sort the
  corpus by document). The plan does not regroup scattered rows: a shard would then be a set of rows from
  anywhere in the corpus (a document spread over a thousand files makes its shard read a thousand files),
  which a (file, row range) piece cannot say and a reader cannot stream.
* **a shard edge never falls inside a document**: the edges at multiples of ``rows_per_shard`` that would are
  moved to the end of that document (``embed.plan.cut_shards``), so a shard may run over ``rows_per_shard``
  to finish one.

The pass reads only the document column and groups it by document — count, first and last position — on the
same engines as the duplicate-id pass (``embed.passes``): in process up to ``local_max_rows`` rows, Ray Data
above. A document is consecutive when ``count == last - first + 1``. What comes back to the driver is the
documents that contain an edge (at most one per edge) and, if any document is scattered, the first one of
them and how many there are. The spans are kept in ``_plan/documents.parquet`` so a rerun cuts the same
shards.
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, ContextManager

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..config import CorpusSettings, StorageSettings
from ..errors import CorpusError
from ..storage import Storage
from .corpus import CorpusFile
from .passes import LOCAL_MAX_ROWS, locate, num_partitions, ray_data, read_positions, row_groups

__all__ = ["plan_documents", "read_spans", "DOCUMENTS", "Span"]

log = logging.getLogger("jinabatch.embed")

DOCUMENTS = "_plan/documents.parquet"
Span = tuple[int, int]  # first and last corpus position of one document's rows


def _docs_batch(batch: pa.Table, column: str, settings: StorageSettings) -> pa.Table:
    """Ray Data UDF: row-group descriptions in, their (doc, pos) rows out (rows without a document left out)."""
    tables = [read_positions(u, int(r), int(p), column, settings, name="doc")
              for u, r, p in zip(batch["uri"].to_pylist(), batch["rg"].to_pylist(), batch["pos0"].to_pylist())]
    t = pa.concat_tables(tables)
    return t.filter(pc.is_valid(t["doc"]))


def _judge(groups: pa.Table, rows_per_shard: int) -> pa.Table:
    """Ray Data UDF too. Per-document (doc, n, first, last) in; out: the documents that hold a shard edge
    (``scattered`` 0) and the first scattered document, with how many there are in ``scattered`` (≤ 1 such row)."""
    first, last = groups["first"], groups["last"]
    gap = pc.not_equal(groups["n"], pc.add(pc.subtract(last, first), 1))
    edge = pc.not_equal(pc.divide(first, rows_per_shard), pc.divide(last, rows_per_shard))  # integer division
    spans = groups.filter(pc.and_(edge, pc.invert(gap)))
    spans = spans.append_column("scattered", pa.array([0] * spans.num_rows, pa.int64()))
    bad = groups.filter(gap)
    if bad.num_rows:
        worst = bad.take([pc.index(bad["first"], pc.min(bad["first"])).as_py()])
        spans = pa.concat_tables([spans, worst.append_column("scattered", pa.array([bad.num_rows], pa.int64()))])
    return spans


def _in_process(files: Sequence[CorpusFile], column: str, settings: StorageSettings, rows_per_shard: int) -> pa.Table:
    tables = [read_positions(g["uri"], g["rg"], g["pos0"], column, settings, name="doc") for g in row_groups(files)]
    t = pa.concat_tables(tables) if tables else pa.table({"doc": pa.array([], pa.string()),
                                                          "pos": pa.array([], pa.int64())})
    t = t.filter(pc.is_valid(t["doc"]))
    g = t.group_by("doc").aggregate([("pos", "count"), ("pos", "min"), ("pos", "max")])
    g = g.rename_columns([{"pos_count": "n", "pos_min": "first", "pos_max": "last"}.get(c, c) for c in g.column_names])
    return _judge(g, rows_per_shard)


def _on_ray(files: Sequence[CorpusFile], column: str, settings: StorageSettings, rows_per_shard: int,
            rows: int) -> pa.Table | None:
    import ray
    from ray.data.aggregate import Count, Max, Min

    with ray_data():
        groups = list(row_groups(files))
        items = ray.data.from_items(groups, override_num_blocks=max(1, min(len(groups) // 8, 2000)))
        docs = items.map_batches(_docs_batch, batch_size=8, batch_format="pyarrow",
                                 fn_kwargs={"column": column, "settings": settings})
        per_doc = docs.groupby("doc", num_partitions=num_partitions(rows)).aggregate(
            Count(alias_name="n"), Min("pos", alias_name="first"), Max("pos", alias_name="last"))
        judged = per_doc.map_batches(_judge, batch_format="pyarrow", fn_kwargs={"rows_per_shard": rows_per_shard})
        parts = [t for t in ray.get(judged.to_arrow_refs()) if t.num_rows]
    return pa.concat_tables(parts) if parts else None  # None: no document holds an edge, none is scattered


def _refuse(found: pa.Table, files: Sequence[CorpusFile], column: str) -> None:
    """CorpusError naming the first scattered document (in corpus order), if there is one."""
    bad = found.filter(pc.greater(found["scattered"], 0))
    if not bad.num_rows:
        return
    count = pc.sum(bad["scattered"]).as_py()
    row = bad.take([pc.index(bad["first"], pc.min(bad["first"])).as_py()]).to_pylist()[0]
    which, at = locate(files, [row["first"], row["last"]])
    (f1, f2), (r1, r2) = [files[i].uri for i in which], at.tolist()
    others = f" (and {count - 1} other document(s))" if count > 1 else ""
    raise CorpusError(
        f"document {row['doc']!r} (corpus.document_column {column!r}) is not in consecutive rows: its {row['n']} "
        f"rows run from {f1} row {r1} to {f2} row {r2} with other rows between them{others}. Late chunking keeps "
        "each document in one shard and a shard is a run of consecutive rows (file order, then row), so sort the "
        f"corpus by {column!r} (chunks of one document may stay in any order when corpus.chunk_order_column is "
        "set; rows without a document belong before or after all documents), or set jina.late_chunking = false")


def plan_documents(files: Sequence[CorpusFile], cs: CorpusSettings, rows_per_shard: int, out: Storage, *,
                   settings: StorageSettings, local_max_rows: int = LOCAL_MAX_ROWS,
                   ray_context: Callable[[], ContextManager[Any]] = contextlib.nullcontext) -> list[Span]:
    """The spans of the documents that hold a multiple of ``rows_per_shard`` (sorted), also written to
    ``out/_plan/documents.parquet``; CorpusError naming the first document whose rows are not consecutive."""
    column = cs.document_column
    rows = sum(f.rows for f in files)
    t0 = time.monotonic()
    if rows <= local_max_rows:
        found, engine = _in_process(files, column, settings, rows_per_shard), "in process"
    else:
        with ray_context():
            found, engine = _on_ray(files, column, settings, rows_per_shard, rows), "Ray Data"
    spans = pa.table({"first": pa.array([], pa.int64()), "last": pa.array([], pa.int64())})
    if found is not None and found.num_rows:
        _refuse(found, files, column)
        spans = found.select(["first", "last"]).sort_by("first")
    tmp = out.local_temp(DOCUMENTS)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(spans, tmp)
    out.upload(tmp, DOCUMENTS)
    log.info("document pass (%s) over %d rows: %d document(s) hold a shard edge and extend their shard, in %.1fs",
             engine, rows, spans.num_rows, time.monotonic() - t0)
    return list(zip(spans["first"].to_pylist(), spans["last"].to_pylist()))


def read_spans(out: Storage) -> list[Span] | None:
    """The spans ``plan_documents`` kept, or None when the plan has none."""
    if out.stat(DOCUMENTS) is None:
        return None
    t = pq.read_table(out.open_input_file(DOCUMENTS))
    return list(zip(t["first"].to_pylist(), t["last"].to_pylist()))

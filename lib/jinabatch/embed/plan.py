"""From ``corpus.path`` to a plan of shards, checked before any API call, kept for the next run.

A shard is ``rows_per_shard`` consecutive rows of the corpus in corpus order (file order, then row), whatever
the files look like: a row group bigger than a shard is split into row ranges, small files and row groups
are grouped, so a shard is a list of *pieces* (file, row range) — and one shard is one output file. Cuts
fall at exact multiples of ``rows_per_shard`` of the global row position, so the same corpus always gives
the same shards and rows appended at the end of the corpus only touch the last shard. Under late chunking a
cut that would fall inside a document moves to that document's end (``embed.documents``), so a shard may run
over ``rows_per_shard``. A delta (``output.write = "delta"``) is cut differently: its shards hold only the rows the
join against ``output.previous`` did not reuse (``cut_sparse``), so a night's tasks read, embed and write what
changed, not the corpus.

``plan_corpus`` lists the corpus (``embed.corpus``), and if ``output/_plan/`` holds a plan of this very
corpus (same files, sizes and modification times) and the same settings, reuses it: a rerun neither reopens
every footer nor repeats the duplicate pass. Otherwise it opens every footer, runs the duplicate pass
(``embed.dedup``: in process for a small corpus, Ray Data above) and writes ``_plan/``:

    _plan/plan.json            settings, corpus fingerprint, counts, output column types
    _plan/files.parquet        one row per file: uri, fingerprint, rows, offset, rows per row group, partition
    _plan/duplicates.parquet   later occurrences of an id, sorted by position (read by each shard's task)
    _plan/reuse.parquet        with output.previous: rows whose vector is carried over (embed.incremental)
    _plan/todo.parquet         for a delta: the positions of every other row, one row group per shard
    _plan/documents.parquet    under late chunking: the documents a cut would split (embed.documents)

The driver's memory follows the number of files and shards, never the number of rows.
"""
from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable, ContextManager

import pyarrow as pa
import pyarrow.parquet as pq

from ..config import Config
from ..observe.report import EmbedReport
from ..storage import FileStat, Storage
from .chunking import check_late_chunking
from .corpus import CorpusFile, inspect_files, list_corpus
from .dedup import LOCAL_MAX_ROWS, find_duplicates
from .documents import Span, plan_documents, read_spans
from .chain import DELETED, PRIOR, read_chain
from .incremental import TODO, Reuse, plan_reuse

__all__ = ["Piece", "Shard", "Plan", "plan_corpus", "cut_shards", "cut_sparse", "read_files", "corpus_fingerprint",
           "PLAN_DIR"]

log = logging.getLogger("jinabatch.embed")
PLAN_DIR = "_plan"
PLAN_VERSION = 4  # 3: reuse locations name the chain member (embed.chain); 4: a delta's shards are its to-do list


@dataclass(frozen=True)
class Piece:
    """Rows ``[row_start, row_stop)`` of one corpus file."""

    file: str  # the file's uri (absolute local path or scheme://...)
    fingerprint: str
    row_start: int
    row_stop: int
    partition: tuple[tuple[str, Any], ...] = ()  # carried values from a Hive-style path

    @property
    def rows(self) -> int:
        return self.row_stop - self.row_start

    def describe(self) -> dict[str, Any]:
        return {"file": self.file, "fingerprint": self.fingerprint, "row_start": self.row_start,
                "row_stop": self.row_stop}


@dataclass(frozen=True)
class Shard:
    """Corpus positions ``[start, stop)``, made of pieces of one or more files, in corpus order — or, for a delta
    (``sparse``), rows ``[start, stop)`` of ``_plan/todo.parquet``: the corpus positions the join marked new or
    changed, read by the task (``incremental.read_todo``), so a delta's tasks read only those rows."""

    index: int
    start: int
    stop: int
    pieces: tuple[Piece, ...]
    sparse: str = ""  # a delta's shard: what its to-do list was made from (corpus listing and the chain it joins)

    @property
    def rows(self) -> int:
        return self.stop - self.start

    @property
    def name(self) -> str:
        return f"shard-{self.index:05d}"

    @property
    def key(self) -> str:
        """What this shard's input is: its pieces with their files' fingerprints (a changed file, a new cut)."""
        text = json.dumps([self.start, self.stop, [p.describe() for p in self.pieces]] + ([self.sparse] if self.sparse
                                                                                         else []), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Plan:
    """The checked corpus and its shards: what the embed stage runs and ``_plan/`` keeps."""

    root: str  # the corpus root uri
    files: list[CorpusFile]
    shards: list[Shard]
    id_type: pa.DataType
    column_types: dict[str, pa.DataType]
    partition_columns: tuple[str, ...]
    duplicates: int
    fingerprint: str  # of the corpus listing
    reused: bool = False  # loaded from _plan/ instead of inspected again
    reuse: Reuse | None = None  # the join against output.previous (incremental runs)

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)

    @property
    def shard_rows(self) -> int:
        """Rows the shards hold: the corpus's, or a delta's new and changed rows (the others stay in the chain)."""
        return sum(s.rows for s in self.shards)


def _ends(rows: int, rows_per_shard: int, spans: Sequence[Span]) -> list[int]:
    """Where shards end: every multiple of ``rows_per_shard``, moved past the document ``spans`` (sorted
    (first, last) positions) that hold it; the end of the corpus last."""
    ends: list[int] = []
    k = 0
    for cut in range(rows_per_shard, rows, rows_per_shard):
        while k < len(spans) and spans[k][1] < cut:
            k += 1
        if k < len(spans) and spans[k][0] < cut:  # inside a document: its shard runs on to the document's end
            cut = spans[k][1] + 1
        if cut < rows and (not ends or cut > ends[-1]):
            ends.append(cut)
    return ends + [rows] if rows else []


def cut_shards(files: list[CorpusFile], rows_per_shard: int, spans: Sequence[Span] = ()) -> list[Shard]:
    """Cut the corpus's rows (file order, then row) into shards of ``rows_per_shard`` rows (the last may be
    smaller); a shard's pieces are the file ranges it covers. ``spans``: documents an edge must not split
    (late chunking, ``embed.documents``): their shard runs over ``rows_per_shard`` to finish them."""
    ends = iter(_ends(sum(f.rows for f in files), rows_per_shard, spans))
    shards: list[Shard] = []
    pieces: list[Piece] = []
    start = pos = 0
    end = next(ends, 0)
    for f in files:
        row = 0
        while row < f.rows:
            take = min(end - pos, f.rows - row)
            pieces.append(Piece(f.uri, f.fingerprint, row, row + take, f.partition))
            row += take
            pos += take
            if pos == end:
                shards.append(Shard(len(shards), start, pos, tuple(pieces)))
                start, pieces, end = pos, [], next(ends, pos)
    return shards


def cut_sparse(todo: int, rows_per_shard: int, source: str) -> list[Shard]:
    """A delta's shards: ``rows_per_shard`` rows of the ``todo`` rows in ``_plan/todo.parquet`` each (a row range of
    it, read by ``incremental.read_todo``); ``source`` names what the list was made from."""
    return [Shard(k, start, min(start + rows_per_shard, todo), (), source)
            for k, start in enumerate(range(0, todo, rows_per_shard))]


def _cut(files: list[CorpusFile], config: Config, spans: Sequence[Span], reuse: Reuse | None,
         fingerprint: str) -> list[Shard]:
    if reuse is not None and reuse.sparse:
        return cut_sparse(reuse.todo, config.corpus.rows_per_shard, f"{fingerprint}|{reuse.of_id}")
    return cut_shards(files, config.corpus.rows_per_shard, spans)


def read_files(out: Storage) -> list[CorpusFile]:
    """The plan's corpus files (``_plan/files.parquet``)."""
    table = pq.read_table(out.open_input_file(f"{PLAN_DIR}/files.parquet"))
    return [CorpusFile(u, fp, n, tuple(rgs), tuple(tuple(x) for x in json.loads(part)), off)
            for u, fp, n, off, rgs, part in zip(*(table[c].to_pylist() for c in
                                                 ("uri", "fingerprint", "rows", "offset", "row_groups", "partition")))]


def corpus_fingerprint(root: Storage, stats: list[FileStat]) -> str:
    """A hash of the corpus listing (every file's path, size and mtime under ``root``): a changed corpus is planned
    again."""
    h = hashlib.sha256(root.uri.encode())
    for s in stats:
        h.update(f"\n{s.path}\t{s.fingerprint}".encode())
    return h.hexdigest()[:16]


def _settings(config: Config) -> dict[str, Any]:
    c = config.corpus
    s = {"id": c.id_column, "text": c.text_column, "columns": list(c.columns), "rows_per_shard": c.rows_per_shard}
    if config.jina.late_chunking:  # shards are cut at document boundaries (embed.documents)
        s["documents"] = c.document_column
    if config.output.previous:  # the join depends on what the previous output holds and how it was made
        prev = Storage.open(config.output.previous, config.storage)
        rep = EmbedReport.read(prev)
        s["previous"] = {"uri": prev.uri, "fingerprint": rep and rep.fingerprint, "rows": rep and rep.rows_embedded,
                         "embedding": config.embedding_key(), "write": config.output.write,
                         "id": _chain_id(prev)}
    return s


def _chain_id(prev: Storage) -> str | None:
    rec = read_chain(prev)
    return rec.id if rec else None


def _schema_b64(id_type: pa.DataType, column_types: dict[str, pa.DataType]) -> str:
    schema = pa.schema([("__id__", id_type), *column_types.items()])
    return base64.b64encode(schema.serialize().to_pybytes()).decode()


def _save(out: Storage, plan: Plan, config: Config) -> None:
    files = plan.files
    table = pa.table({
        "uri": [f.uri for f in files], "fingerprint": [f.fingerprint for f in files],
        "rows": pa.array([f.rows for f in files], pa.int64()), "offset": pa.array([f.offset for f in files], pa.int64()),
        "row_groups": pa.array([list(f.row_groups) for f in files], pa.list_(pa.int64())),
        "partition": [json.dumps(list(f.partition)) for f in files]})
    tmp = out.local_temp(f"{PLAN_DIR}/files.parquet")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, tmp)
    out.upload(tmp, f"{PLAN_DIR}/files.parquet")
    out.write_json(f"{PLAN_DIR}/plan.json", {
        "version": PLAN_VERSION, "corpus": plan.root, "corpus_fingerprint": plan.fingerprint,
        "settings": _settings(config), "files": len(files), "rows": plan.rows, "shards": len(plan.shards),
        "duplicates": plan.duplicates, "schema": _schema_b64(plan.id_type, plan.column_types),
        "partition_columns": list(plan.partition_columns), "reuse": plan.reuse.to_dict() if plan.reuse else None})


def _load(out: Storage, config: Config, root: Storage, fingerprint: str) -> Plan | None:
    meta = out.read_json(f"{PLAN_DIR}/plan.json")
    if not meta or meta.get("version") != PLAN_VERSION or meta.get("corpus_fingerprint") != fingerprint \
            or meta.get("settings") != _settings(config) or out.stat(f"{PLAN_DIR}/duplicates.parquet") is None:
        return None
    spans = read_spans(out) if config.jina.late_chunking else []
    if spans is None:
        return None
    try:
        files = read_files(out)
        schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(meta["schema"])))
    except (OSError, pa.ArrowInvalid, KeyError, ValueError):
        return None
    column_types = {f.name: f.type for f in schema if f.name != "__id__"}
    reuse = Reuse(**meta["reuse"]) if meta.get("reuse") else None
    if reuse is not None and reuse.kind == "delta" and (out.stat(PRIOR) is None or out.stat(DELETED) is None
                                                        or (reuse.sparse and out.stat(TODO) is None)):
        return None
    return Plan(root.uri, files, _cut(files, config, spans, reuse, fingerprint), schema.field("__id__").type,
                column_types, tuple(meta.get("partition_columns", [])), int(meta["duplicates"]), fingerprint,
                reused=True, reuse=reuse)


def plan_corpus(config: Config, out: Storage, *, ray_context: Callable[[], ContextManager[Any]] = contextlib.nullcontext,
                local_max_rows: int = LOCAL_MAX_ROWS) -> Plan:
    """The plan for ``config.corpus`` with its bookkeeping in ``out/_plan/`` (reused when the corpus and
    settings are unchanged). Raises CorpusError / StorageError before any API call."""
    cs = config.corpus
    root, stats = list_corpus(cs, config.storage, exclude=out)
    fingerprint = corpus_fingerprint(root, stats)
    plan = _load(out, config, root, fingerprint)
    if plan is not None:
        log.info("plan reused from %s: %d files, %d rows, %d shards", out.uri_of(PLAN_DIR), len(plan.files),
                 plan.rows, len(plan.shards))
        return plan
    found = inspect_files(root, stats, cs)
    duplicates = find_duplicates(found.files, cs.id_column, out, settings=config.storage,
                                 local_max_rows=local_max_rows, ray_context=ray_context)
    spans: list[Span] = []
    if config.jina.late_chunking:  # a shard edge never splits a document
        check_late_chunking(cs)
        spans = plan_documents(found.files, cs, cs.rows_per_shard, out, settings=config.storage,
                               local_max_rows=local_max_rows, ray_context=ray_context)
    reuse = None
    if config.output.previous:
        reuse = plan_reuse(config, found.files, out, ray_context=ray_context, local_max_rows=local_max_rows,
                           id_type=found.id_type)
    plan = Plan(root.uri, found.files, _cut(found.files, config, spans, reuse, fingerprint), found.id_type,
                found.column_types, found.partition_columns, duplicates, fingerprint, reuse=reuse)
    _save(out, plan, config)
    log.info("planned %s: %d files, %d rows, %d shards, %d duplicate ids", root.uri, len(plan.files), plan.rows,
             len(plan.shards), duplicates)
    return plan

"""Incremental runs: carry vectors over from a previous output for rows whose (id, text) did not change.

Every shard row records ``text_hash`` (the first 8 bytes of BLAKE2b of its UTF-8 text, as int64). With
``output.previous`` set to a finished output made under the **same embedding key** (model, task, dimensions,
late chunking, normalization, wire type, truncation policy, and who computed it: the local stand-in or the
API), the plan joins the corpus against it by id:

    reused    id in both, same text hash      → the vector is copied from the previous shard; no request
    changed   id in both, other text           → sent to the API
    new       id only in the corpus            → sent to the API
    dropped   id only in the previous output   → absent from the new output, so from the new collection

The join runs on the same engine as the duplicate pass, with the same bound: in process for small inputs,
Ray Data above ``local_max_rows`` (a ``groupby("id")`` with Min/Max aggregates over the union of both sides —
the driver never holds the ids). Its result, ``_plan/reuse.parquet`` (corpus position → previous shard and
row, sorted by position), is read by each shard task for its own range. Duplicate ids (later occurrences)
are left out of the corpus side: they are dead-lettered anyway. A different embedding key re-embeds
everything and says why.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, ContextManager

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..config import Config, StorageSettings
from ..errors import ConfigError
from ..observe.report import EmbedReport
from ..storage import Storage
from .corpus import CorpusFile
from .dedup import DUPLICATES, LOCAL_MAX_ROWS, SHUFFLE_BATCH_BYTES

__all__ = ["text_hash", "text_hashes", "Reuse", "plan_reuse", "read_reuse", "PrevVectors", "REUSE", "HASH_COLUMN"]

log = logging.getLogger("jinabatch.embed")

REUSE = "_plan/reuse.parquet"
HASH_COLUMN = "text_hash"
_LOC_BITS = 32  # loc = previous shard index << 32 | row in that shard
_BIG = np.iinfo(np.int64).max
_SMALL = np.iinfo(np.int64).min


def text_hash(text: str) -> int:
    """The first 8 bytes of BLAKE2b of ``text``'s UTF-8, as a signed int64 (what ``text_hash`` columns hold)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little",
                          signed=True)


def text_hashes(texts: list[str | None]) -> pa.Array:
    """``text_hash`` of each text (null for a null text), as an int64 array."""
    return pa.array([None if t is None else text_hash(t) for t in texts], pa.int64())


@dataclass
class Reuse:
    """The join against ``output.previous``: how many rows are reused, changed, new, dropped (and why none, if so)."""

    previous: str
    reused: int = 0
    changed: int = 0
    new: int = 0
    dropped: int = 0
    note: str = ""  # why nothing is reused, when that is the case

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _prev_report(config: Config, prev: Storage) -> EmbedReport:
    rep = EmbedReport.read(prev)
    if rep is None:
        raise ConfigError(f"output.previous = {prev.uri}: no _report.json there; point it at the output folder of a "
                          "finished embed run")
    if not rep.finished:
        raise ConfigError(f"output.previous = {prev.uri}: that run did not finish; finish it (rerun its embed) or "
                          "point output.previous at a finished output")
    return rep


def check_previous(config: Config, prev: Storage) -> str:
    """"" when ``prev`` can lend vectors to this config, else why not (everything is then embedded again)."""
    rep = _prev_report(config, prev)
    had, now = rep.embedding, config.embedding_key()
    diff = [f"{k} {had.get(k)!r} → {now[k]!r}" for k in now if had.get(k) != now[k]]
    if diff:
        return "the embedding key changed (" + "; ".join(diff) + "): every row is embedded again"
    if config.jina.late_chunking:
        return "late chunking embeds a chunk in its document's context, so a chunk's vector changes with its " \
               "neighbours: every row is embedded again"
    if rep.id_column != config.corpus.id_column:
        return f"the id column changed ({rep.id_column!r} → {config.corpus.id_column!r}): every row is embedded again"
    return ""


# -- reading both sides ----------------------------------------------------------------------------------------

def _corpus_groups(files: list[CorpusFile]) -> Iterator[dict[str, Any]]:
    for f in files:
        pos = f.offset
        for rg, n in enumerate(f.row_groups):
            yield {"side": 0, "uri": f.uri, "rg": rg, "pos0": pos, "shard": -1}
            pos += n


def _open(uri: str, settings: StorageSettings) -> pq.ParquetFile:
    parent, _, name = uri.rpartition("/")
    return pq.ParquetFile(Storage.open(parent or "/", settings).open_input_file(name))


def _read_side(item: dict[str, Any], id_column: str, text_column: str, settings: StorageSettings,
               skip: np.ndarray) -> pa.Table:
    """(id, hc, hp, pos, loc): corpus rows carry their hash in hc and position in pos; previous rows in hp/loc."""
    if item["side"] == 0:
        t = _open(item["uri"], settings).read_row_group(item["rg"], columns=[id_column, text_column])
        pos = np.arange(item["pos0"], item["pos0"] + t.num_rows, dtype=np.int64)
        hashes = text_hashes(t.column(text_column).to_pylist())
        keep = pc.and_(pc.is_valid(t.column(id_column)), pc.is_valid(hashes))
        if len(skip):  # later occurrences of a duplicated id are dead letters, never reused
            keep = pc.and_(keep, pc.invert(pc.is_in(pa.array(pos), value_set=pa.array(skip))))
        n = t.num_rows
        table = pa.table({"id": t.column(id_column), "hc": hashes, "hp": pa.array(np.full(n, _SMALL)),
                          "pos": pa.array(pos), "loc": pa.array(np.full(n, -1, np.int64))})
        return table.filter(keep)
    t = _open(item["uri"], settings).read(columns=[id_column, HASH_COLUMN])
    n = t.num_rows
    loc = (np.int64(item["shard"]) << _LOC_BITS) + np.arange(n, dtype=np.int64)
    return pa.table({"id": t.column(id_column), "hc": pa.array(np.full(n, _BIG)), "hp": t.column(HASH_COLUMN),
                     "pos": pa.array(np.full(n, _BIG)), "loc": pa.array(loc)})


def _side_batch(batch: pa.Table, id_column: str, text_column: str, settings: StorageSettings, skip: list) -> pa.Table:
    import ray

    dup = ray.get(skip[0]) if skip else np.empty(0, np.int64)
    items = batch.to_pylist()
    return pa.concat_tables([_read_side(i, id_column, text_column, settings, dup) for i in items])


def _classify(joined: pa.Table) -> tuple[pa.Table, dict[str, int]]:
    """From per-id (pos=Min, loc=Max, hc=Min, hp=Max): the reuse rows and the counts."""
    in_corpus = pc.less(joined["pos"], _BIG)
    in_prev = pc.greater_equal(joined["loc"], 0)
    both = pc.and_(in_corpus, in_prev)
    same = pc.and_(both, pc.equal(joined["hc"], joined["hp"]))
    counts = {"reused": pc.sum(same).as_py() or 0,
              "changed": pc.sum(pc.and_(both, pc.invert(same))).as_py() or 0,
              "new": pc.sum(pc.and_(in_corpus, pc.invert(in_prev))).as_py() or 0,
              "dropped": pc.sum(pc.and_(in_prev, pc.invert(in_corpus))).as_py() or 0}
    rows = joined.filter(same).select(["pos", "loc"])
    return rows, counts


def _join_in_process(tables: list[pa.Table]) -> pa.Table:
    both = pa.concat_tables(tables)
    g = both.group_by("id").aggregate([("pos", "min"), ("loc", "max"), ("hc", "min"), ("hp", "max")])
    return g.rename_columns(["id", "pos", "loc", "hc", "hp"]).select(["pos", "loc", "hc", "hp"])


def _join_on_ray(items: list[dict[str, Any]], config: Config, skip: np.ndarray,
                 rows: int) -> tuple[pa.Table, dict[str, int]]:
    import ray
    from ray.data import DataContext
    from ray.data.aggregate import Max, Min

    ctx = DataContext.get_current()
    saved = (ctx.enable_progress_bars, ctx.shuffle_input_batch_bytes)
    # Ray's default shuffle (v2, hash-partitioned); its map side buffers 1 GiB of input per batch by default, which
    # grew one worker to 5-12 GB on 20-50M ids: 64 MiB batches keep every process well under 2 GB
    ctx.enable_progress_bars, ctx.shuffle_input_batch_bytes = False, SHUFFLE_BATCH_BYTES
    try:
        ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items) // 4, 2000)))
        sides = ds.map_batches(_side_batch, batch_size=4, batch_format="pyarrow", fn_kwargs={
            "id_column": config.corpus.id_column, "text_column": config.corpus.text_column,
            "settings": config.storage, "skip": [ray.put(skip)]})
        joined = sides.groupby("id", num_partitions=int(min(1024, max(4, rows // 2_000_000)))).aggregate(
            Min("pos", alias_name="pos"), Max("loc", alias_name="loc"), Min("hc", alias_name="hc"),
            Max("hp", alias_name="hp")).materialize()
        counts = {"reused": 0, "changed": 0, "new": 0, "dropped": 0}
        parts = []
        for ref in joined.to_arrow_refs():  # one block at a time: the driver holds reuse rows, never the ids
            rows_part, c = _classify(ray.get(ref))
            for k, v in c.items():
                counts[k] += v
            if rows_part.num_rows:
                parts.append(rows_part)
        table = pa.concat_tables(parts) if parts else pa.table({"pos": pa.array([], pa.int64()),
                                                                 "loc": pa.array([], pa.int64())})
        return table, counts
    finally:
        ctx.enable_progress_bars, ctx.shuffle_input_batch_bytes = saved


def plan_reuse(config: Config, files: list[CorpusFile], out: Storage, *,
               ray_context: Callable[[], ContextManager[Any]] = contextlib.nullcontext,
               local_max_rows: int = LOCAL_MAX_ROWS) -> Reuse:
    """Join the corpus against ``output.previous``; write ``_plan/reuse.parquet``; return the counts."""
    prev = Storage.open(config.output.previous, config.storage)
    prev.check("output.previous")
    reuse = Reuse(prev.uri)
    out.delete(REUSE)
    note = check_previous(config, prev)
    if note:
        reuse.note = note
        reuse.new = sum(f.rows for f in files)
        log.warning("output.previous = %s: %s", prev.uri, note)
        return reuse
    shards = [f for f in prev.list("shards") if f.path.endswith(".parquet") and "/shard-" in f"/{f.path}"]
    items = list(_corpus_groups(files))
    for f in shards:
        index = int(f.path.rsplit("shard-", 1)[1].split(".")[0])
        items.append({"side": 1, "uri": prev.uri_of(f.path), "rg": -1, "pos0": 0, "shard": index})
    if shards:
        schema = _open(items[-1]["uri"], config.storage).schema_arrow
        if HASH_COLUMN not in schema.names:
            raise ConfigError(f"output.previous = {prev.uri}: its shards have no {HASH_COLUMN!r} column (written by "
                              "an older version); embed once into a new output without output.previous")
    dup_table = pq.read_table(out.open_input_file(DUPLICATES), columns=["pos"]) if out.stat(DUPLICATES) else None
    skip = dup_table["pos"].to_numpy() if dup_table is not None else np.empty(0, np.int64)
    t0 = time.monotonic()
    rows = 2 * sum(f.rows for f in files)  # corpus and previous output are about the same size
    if rows <= local_max_rows:
        tables = [_read_side(i, config.corpus.id_column, config.corpus.text_column, config.storage, skip)
                  for i in items]
        table, counts = _classify(_join_in_process(tables)) if tables else (None, {})
        engine = "in process"
    else:
        with ray_context():
            table, counts = _join_on_ray(items, config, skip, rows)
        engine = "Ray Data"
    for k, v in counts.items():
        setattr(reuse, k, v)
    if table is not None:
        table = table.sort_by("pos")
        tmp = out.local_temp(REUSE)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, tmp, row_group_size=65536)
        out.upload(tmp, REUSE)
    log.info("incremental join (%s) against %s: %d reused, %d changed, %d new, %d dropped in %.1fs", engine, prev.uri,
             reuse.reused, reuse.changed, reuse.new, reuse.dropped, time.monotonic() - t0)
    return reuse


def read_reuse(out: Storage, start: int, stop: int) -> dict[int, int]:
    """{corpus position: previous loc} for the rows in ``[start, stop)`` whose vector is carried over."""
    if out.stat(REUSE) is None:
        return {}
    t = pq.read_table(out.open_input_file(REUSE), filters=[("pos", ">=", start), ("pos", "<", stop)])
    return dict(zip(t["pos"].to_pylist(), t["loc"].to_pylist()))


class PrevVectors:
    """Vectors of the previous output's shards, read one shard file at a time and kept for the next rows."""

    def __init__(self, prev_uri: str, settings: StorageSettings, keep: int = 2):
        self.prev = Storage.open(prev_uri, settings)
        self.keep = keep
        self._cache: dict[int, np.ndarray] = {}

    def get(self, loc: int) -> np.ndarray:
        """The previous output's vector at ``loc`` (its shard << 32 | its row there)."""
        shard, row = loc >> _LOC_BITS, loc & ((1 << _LOC_BITS) - 1)
        if shard not in self._cache:
            if len(self._cache) >= self.keep:
                self._cache.pop(next(iter(self._cache)))
            col = pq.read_table(self.prev.open_input_file(f"shards/shard-{shard:05d}.parquet"),
                                columns=["embedding"]).column("embedding").combine_chunks()
            dim = len(col[0]) if len(col) else 0
            self._cache[shard] = col.flatten().to_numpy().reshape(-1, dim) if dim else np.empty((0, 0), np.float32)
        return self._cache[shard][row]

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
from dataclasses import asdict, dataclass, field
from typing import Any, ContextManager

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..config import Config, StorageSettings
from ..errors import ConfigError
from ..observe.report import EmbedReport
from ..storage import Storage
from .chain import DELETED, PRIOR, chain_members, decode, locate, member_codes, member_items, write_table
from .corpus import CorpusFile
from .dedup import DUPLICATES, LOCAL_MAX_ROWS
from .passes import num_partitions, ray_data

__all__ = ["text_hash", "text_hashes", "Reuse", "plan_reuse", "read_reuse", "write_todo", "read_todo", "PrevVectors",
           "member_side", "REUSE", "TODO", "HASH_COLUMN"]

log = logging.getLogger("jinabatch.embed")

REUSE = "_plan/reuse.parquet"
TODO = "_plan/todo.parquet"
HASH_COLUMN = "text_hash"
_BIG = np.iinfo(np.int64).max
_SMALL = np.iinfo(np.int64).min


def text_hash(text: str) -> int:
    """The first 8 bytes of BLAKE2b of ``text``'s UTF-8, as a signed int64 (what ``text_hash`` columns hold)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little",
                          signed=True)


def text_hashes(texts: pa.Array | pa.ChunkedArray | list[str | None]) -> pa.Array:
    """``text_hash`` of each text (null for a null text), as an int64 array. An Arrow string column is hashed from
    its buffers (no Python string per row: ~1 µs a row instead of ~1.5)."""
    if isinstance(texts, list):
        return pa.array([None if t is None else text_hash(t) for t in texts], pa.int64())
    arr = texts.combine_chunks() if isinstance(texts, pa.ChunkedArray) else texts
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        width = 8 if pa.types.is_large_string(arr.type) else 4
        offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64 if width == 8 else np.int32, count=len(arr) + 1,
                                offset=arr.offset * width).tolist()
        data = memoryview(arr.buffers()[2] or b"")
        b2 = hashlib.blake2b
        digests = b"".join([b2(data[a:b], digest_size=8).digest() for a, b in zip(offsets, offsets[1:])])
        hashes = pa.array(np.frombuffer(digests, dtype="<i8").astype(np.int64))
        return hashes if not arr.null_count else pc.if_else(arr.is_valid(), hashes, pa.scalar(None, pa.int64()))
    return text_hashes(arr.to_pylist())


@dataclass
class Reuse:
    """The join against ``output.previous``: how many rows are reused, changed, new, dropped (and why none, if so)."""

    previous: str
    reused: int = 0
    changed: int = 0
    new: int = 0
    dropped: int = 0
    note: str = ""  # why nothing is reused, when that is the case
    kind: str = "full"  # "delta": the output holds only new and changed rows (embed.chain)
    chain_length: int = 0  # outputs in output.previous's chain
    of_id: str = ""  # output.previous's id and state (embed.chain)
    of_state: str = ""
    rows_before: int = 0  # rows of output.previous's state
    members: list = field(default_factory=list)  # output.previous's chain, base first ({uri, id})
    todo: int = 0  # a delta's rows not reused (new, changed, or dead letters again): what its shards hold
    seconds: float = 0.0  # the join's

    @property
    def sparse(self) -> bool:
        """The run is a delta: its shards are cut from ``_plan/todo.parquet`` (``plan.cut_sparse``)."""
        return self.kind == "delta" and not self.note

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
            yield {"side": 0, "uri": f.uri, "rg": rg, "pos0": pos, "shard": -1, "member": 0}
            pos += n


def _open(uri: str, settings: StorageSettings) -> pq.ParquetFile:
    parent, _, name = uri.rpartition("/")
    return pq.ParquetFile(Storage.open(parent or "/", settings).open_input_file(name))


def _read_side(item: dict[str, Any], id_column: str, text_column: str, settings: StorageSettings,
               skip: np.ndarray, id_type: pa.DataType | None = None) -> pa.Table:
    """(id, pos, hc, pa, pb, pl): corpus rows carry their position in pos and hash in hc; a chain member's rows
    (or deleted ids) their codes in pa/pb/pl (embed.chain)."""
    if item["side"] == 0:
        t = _open(item["uri"], settings).read_row_group(item["rg"], columns=[id_column, text_column])
        pos = np.arange(item["pos0"], item["pos0"] + t.num_rows, dtype=np.int64)
        hashes = text_hashes(t.column(text_column))
        keep = pc.and_(pc.is_valid(t.column(id_column)), pc.is_valid(hashes))
        if len(skip):  # later occurrences of a duplicated id are dead letters, never reused
            keep = pc.and_(keep, pc.invert(pc.is_in(pa.array(pos), value_set=pa.array(skip))))
        n = t.num_rows
        minus = pa.array(np.full(n, -1, np.int64))
        table = pa.table({"id": t.column(id_column), "pos": pa.array(pos), "hc": hashes, "pa": minus, "pb": minus,
                          "pl": minus})
        return table.filter(keep)
    cols = [id_column, HASH_COLUMN] if item["side"] == 1 else ["id"]
    t = _open(item["uri"], settings).read(columns=cols)
    n = t.num_rows
    hashes = t.column(HASH_COLUMN).to_numpy(zero_copy_only=False) if item["side"] == 1 else np.zeros(n, np.int64)
    pa_, pb_, pl = member_codes(item["member"], item["shard"] if item["side"] == 1 else -1, hashes)
    big = pa.array(np.full(n, _BIG))
    ids = t.column(cols[0])
    return pa.table({"id": ids if id_type is None else ids.cast(id_type),
                     "pos": big, "hc": big, "pa": pa.array(pa_), "pb": pa.array(pb_), "pl": pa.array(pl)})


def member_side(item: dict[str, Any], id_column: str, settings: StorageSettings) -> pa.Table:
    """(id, pl) of one chain member's shard or deleted-id file (``embed.chain.member_items``)."""
    return _read_side(item, id_column, "", settings, np.empty(0, np.int64)).select(["id", "pl"])


def _side_batch(batch: pa.Table, id_column: str, text_column: str, settings: StorageSettings, skip: list,
                id_type: pa.DataType) -> pa.Table:
    import ray

    dup = ray.get(skip[0]) if skip else np.empty(0, np.int64)
    items = batch.to_pylist()
    return pa.concat_tables([_read_side(i, id_column, text_column, settings, dup, id_type) for i in items])


_COUNTS = ("reused", "changed", "new", "dropped")


def _classify(joined: pa.Table) -> tuple[pa.Table, dict[str, int], pa.Table]:
    """From per-id (pos=Min, hc=Min, pa/pb/pl=Max): the reuse rows (pos, loc), the counts, and the changes
    (id, code, deleted): where each changed or dropped id's current row is in the chain."""
    present, hp, _ = decode(*(joined[c].to_numpy() for c in ("pa", "pb", "pl")))
    in_corpus = joined["pos"].to_numpy() < _BIG
    both = in_corpus & present
    same = both & (joined["hc"].to_numpy() == hp)
    changed, dropped = both & ~same, present & ~in_corpus
    counts = {"reused": int(same.sum()), "changed": int(changed.sum()), "new": int((in_corpus & ~present).sum()),
              "dropped": int(dropped.sum())}
    rows = pa.table({"pos": joined["pos"], "loc": joined["pl"]}).filter(pa.array(same))
    moved = pa.array(changed | dropped)
    changes = pa.table({"id": joined["id"], "code": joined["pl"], "deleted": pa.array(dropped)}).filter(moved)
    return rows, counts, changes


def _join_in_process(tables: list[pa.Table]) -> pa.Table:
    both = pa.concat_tables(tables)
    g = both.group_by("id").aggregate([("pos", "min"), ("hc", "min"), ("pa", "max"), ("pb", "max"), ("pl", "max")])
    return g.rename_columns([c.rsplit("_", 1)[0] for c in g.column_names])  # pos_min -> pos


def _join_on_ray(items: list[dict[str, Any]], config: Config, skip: np.ndarray, rows: int,
                 id_type: pa.DataType) -> tuple[pa.Table, dict[str, int], pa.Table]:
    import ray
    from ray.data.aggregate import Max, Min

    with ray_data():
        ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items) // 4, 2000)))
        sides = ds.map_batches(_side_batch, batch_size=4, batch_format="pyarrow", fn_kwargs={
            "id_column": config.corpus.id_column, "text_column": config.corpus.text_column,
            "settings": config.storage, "skip": [ray.put(skip)], "id_type": id_type})
        joined = sides.groupby("id", num_partitions=num_partitions(rows)).aggregate(
            Min("pos", alias_name="pos"), Min("hc", alias_name="hc"), Max("pa", alias_name="pa"),
            Max("pb", alias_name="pb"), Max("pl", alias_name="pl")).materialize()
        counts = dict.fromkeys(_COUNTS, 0)
        parts, moved = [], []
        for ref in joined.to_arrow_refs():  # one block at a time: the driver holds reuse rows, never the ids
            rows_part, c, changes = _classify(ray.get(ref))
            for k, v in c.items():
                counts[k] += v
            if rows_part.num_rows:
                parts.append(rows_part)
            if changes.num_rows:
                moved.append(changes)
        table = pa.concat_tables(parts) if parts else _EMPTY_REUSE
        return table, counts, (pa.concat_tables(moved) if moved else None)


_EMPTY_REUSE = pa.table({"pos": pa.array([], pa.int64()), "loc": pa.array([], pa.int64())})


def _previous_items(config: Config, prev: Storage, reuse: Reuse) -> list[dict[str, Any]]:
    """The join's items for ``output.previous``'s chain; fills in what ``reuse`` says about it."""
    members = chain_members(prev, config.storage)
    head = members[-1][1]
    reuse.chain_length, reuse.of_id, reuse.of_state, reuse.rows_before = len(members), head.id, head.state, head.rows
    reuse.members = [m.model_dump() for m in head.members]
    items = member_items(members)
    shard = next((i for i in items if i["side"] == 1), None)
    if shard is not None and HASH_COLUMN not in _open(shard["uri"], config.storage).schema_arrow.names:
        raise ConfigError(f"output.previous = {prev.uri}: its shards have no {HASH_COLUMN!r} column (written by "
                          "an older version); embed once into a new output without output.previous")
    return items


def _write_changes(out: Storage, changes: pa.Table | None, id_type: pa.DataType) -> None:
    """A delta's ``_delta/deleted.parquet`` and ``_delta/prior.parquet`` (embed.chain)."""
    if changes is None:
        changes = pa.table({"id": pa.array([], id_type), "code": pa.array([], pa.int64()),
                            "deleted": pa.array([], pa.bool_())})
    write_table(out, PRIOR, changes.sort_by("code"))
    write_table(out, DELETED, pa.table({"id": changes.filter(changes["deleted"])["id"]}))


def write_todo(out: Storage, reused: pa.Array, rows: int, rows_per_shard: int) -> int:
    """A delta's to-do list: every corpus position in ``[0, rows)`` not in ``reused``, sorted, as
    ``_plan/todo.parquet`` with one row group per shard of ``rows_per_shard`` rows; how many."""
    keep = np.ones(rows, bool)
    keep[reused.to_numpy(zero_copy_only=False)] = False
    pos = np.flatnonzero(keep).astype(np.int64)
    write_table(out, TODO, pa.table({"pos": pos}), row_group_size=rows_per_shard)
    return len(pos)


def read_todo(out: Storage, start: int, stop: int) -> np.ndarray:
    """Rows ``[start, stop)`` of a delta's to-do list: the corpus positions its shard holds (one row group of
    ``_plan/todo.parquet`` as ``write_todo`` writes it; any row group that overlaps, whatever the layout)."""
    pf = pq.ParquetFile(out.open_input_file(TODO))
    parts, first = [], 0
    for g in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        if first < stop and first + n > start:
            col = pf.read_row_group(g, columns=["pos"]).column("pos").to_numpy()
            parts.append(col[max(0, start - first):stop - first])
        first += n
    return np.concatenate(parts) if parts else np.empty(0, np.int64)


def plan_reuse(config: Config, files: list[CorpusFile], out: Storage, *,
               ray_context: Callable[[], ContextManager[Any]] = contextlib.nullcontext,
               local_max_rows: int = LOCAL_MAX_ROWS, id_type: pa.DataType | None = None) -> Reuse:
    """Join the corpus against ``output.previous``'s chain; write ``_plan/reuse.parquet`` (and, for a delta,
    ``_delta/``); return the counts."""
    prev = Storage.open(config.output.previous, config.storage)
    prev.check("output.previous")
    reuse = Reuse(prev.uri)
    out.delete_many([REUSE, TODO, DELETED, PRIOR])
    note = check_previous(config, prev)
    if note:
        reuse.note = note
        reuse.new = sum(f.rows for f in files)
        log.warning("output.previous = %s: %s", prev.uri, note)
        return reuse
    reuse.kind = config.output.write
    items = list(_corpus_groups(files)) + _previous_items(config, prev, reuse)
    id_type = id_type or pa.int64()
    dup_table = pq.read_table(out.open_input_file(DUPLICATES), columns=["pos"]) if out.stat(DUPLICATES) else None
    skip = dup_table["pos"].to_numpy() if dup_table is not None else np.empty(0, np.int64)
    t0 = time.monotonic()
    rows = sum(f.rows for f in files) + reuse.rows_before
    if rows <= local_max_rows:
        tables = [_read_side(i, config.corpus.id_column, config.corpus.text_column, config.storage, skip, id_type)
                  for i in items]
        table, counts, changes = _classify(_join_in_process(tables)) if tables else (_EMPTY_REUSE, {}, None)
        engine = "in process"
    else:
        with ray_context():
            table, counts, changes = _join_on_ray(items, config, skip, rows, id_type)
        engine = "Ray Data"
    for k, v in counts.items():
        setattr(reuse, k, v)
    table = table.sort_by("pos")
    write_table(out, REUSE, table)
    if reuse.kind == "delta":
        _write_changes(out, changes, id_type)
        reuse.todo = write_todo(out, table["pos"].combine_chunks() if table.num_rows else pa.array([], pa.int64()),
                                sum(f.rows for f in files), config.corpus.rows_per_shard)
    reuse.seconds = round(time.monotonic() - t0, 3)
    log.info("incremental join (%s) against %s (chain of %d): %d reused, %d changed, %d new, %d dropped in %.1fs",
             engine, prev.uri, reuse.chain_length, reuse.reused, reuse.changed, reuse.new, reuse.dropped,
             reuse.seconds)
    return reuse


def read_reuse(out: Storage, start: int, stop: int) -> dict[int, int]:
    """{corpus position: previous loc} for the rows in ``[start, stop)`` whose vector is carried over."""
    if out.stat(REUSE) is None:
        return {}
    t = pq.read_table(out.open_input_file(REUSE), filters=[("pos", ">=", start), ("pos", "<", stop)])
    return dict(zip(t["pos"].to_pylist(), t["loc"].to_pylist()))


class PrevVectors:
    """Vectors of the previous chain's shards (a location code names the member, shard and row: embed.chain), read
    one shard file at a time and kept for the next rows."""

    def __init__(self, prev_uri: str, settings: StorageSettings, keep: int = 2):
        self.members = [st for st, _ in chain_members(Storage.open(prev_uri, settings), settings)]
        self.keep = keep
        self._cache: dict[tuple[int, int], np.ndarray] = {}

    def get(self, loc: int) -> np.ndarray:
        """The chain's vector at location code ``loc``."""
        member, shard, row = locate(loc)
        if (member, shard) not in self._cache:
            if len(self._cache) >= self.keep:
                self._cache.pop(next(iter(self._cache)))
            col = pq.read_table(self.members[member - 1].open_input_file(f"shards/shard-{shard:05d}.parquet"),
                                columns=["embedding"]).column("embedding").combine_chunks()
            dim = len(col[0]) if len(col) else 0
            vecs = col.flatten().to_numpy().reshape(-1, dim) if dim else np.empty((0, 0), np.float32)
            self._cache[(member, shard)] = vecs
        return self._cache[(member, shard)][row]

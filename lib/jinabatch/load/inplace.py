"""In-place loads: a delta (``embed.chain``) applied to the collection behind the alias, and undone by a rollback.

``apply_delta`` — only onto the collection the alias serves, and only if that collection holds the state the delta
was made against (``load.ledger``); otherwise it stops naming both (``jinabatch load --full`` loads the chain into
a new collection instead). ``apply_chain`` first applies, in order, the deltas of the chain the collection does not
hold yet (nights whose load never ran). Then, for each:

    ledger: pending apply        a rerun after a crash finishes this same apply
    upsert the delta's rows      new and changed rows; upsert replaces a primary key, so never two rows per id
                                 (bulk import only appends: it is not used here)
    delete the deleted ids       by primary key; deleting an absent id is no error
    verify                       count(*) == rows before + added − deleted; sampled upserted rows == the delta's
                                 shards; sampled deleted ids absent
    ledger: the delta's state    with the delta kept for a rollback

Queries keep going through the alias while a delta is applied: each row is replaced atomically (an upsert is a
delete and an insert under one timestamp), so a query sees a row's old or new version, never both and never
neither; but a query in the window sees some rows of the night already changed and others not yet. The window is
the upserts and deletes alone — no index build, no collection load, no alias switch — and writes go in RPCs of
``milvus.insert_batch_mb``. Upserted rows sit in growing segments, searched by brute force until Milvus seals and
indexes them on its own.

``undo_delta`` — a rollback after an in-place load: the changed and deleted rows get their previous version back
(read from the chain, where ``_delta/prior.parquet`` says it is), the rows the delta added are deleted, and the
result is verified the same way (count == the rows before the delta; sampled restored rows equal the chain's).
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from ..config import MilvusSettings, StorageSettings
from ..embed.chain import PRIOR, M32, chain_members, deleted_ids, read_chain
from ..errors import LoadError
from ..observe.records import AppliedDelta, ChainRecord, LedgerEntry, PendingOp
from ..observe.report import LoadReport
from ..storage import Storage
from .ledger import Ledger
from .milvus import PROP, Target, alias_target, delete_ids, upsert_batch, upsert_shards
from .schema import ShardFile
from .verify import absent, compare_rows, count_rows, verify_sample

__all__ = ["apply_delta", "apply_chain", "undo_delta", "held_state", "delta_shards"]

log = logging.getLogger(__name__)


def delta_shards(out: Storage) -> list[ShardFile]:
    """The shard files of a delta (none when it only deletes, or changed nothing)."""
    files = []
    for f in out.list("shards", recursive=False, pattern="shard-*.parquet"):
        md = pq.ParquetFile(out.open_input_file(f.path)).metadata
        files.append(ShardFile(out, f.path, md.num_rows, {},
                               tuple(md.row_group(i).num_rows for i in range(md.num_row_groups))))
    return files


class _Collection:
    """The collection the alias serves, what its properties say about its fields, and its ledger entry."""

    def __init__(self, target: Target, alias: str):
        client = target.client
        self.name = alias_target(client, alias)
        if self.name is None:
            raise LoadError(f"alias {alias!r} does not exist in Milvus at {target.uri}: a delta is applied in place "
                            "to a collection a full load made — load the chain's base (or `jinabatch load --full`)")
        # the collection the alias serves is loaded: Milvus does not always reload it after a restart (the embedded
        # server is started per command), and the check after the writes queries it; a no-op when it is loaded
        client.load_collection(self.name)
        props = client.describe_collection(self.name).get("properties") or {}
        self.dim = int(props.get(PROP + "dimensions", 0))
        self.id_name = props.get(PROP + "id_column", "id")
        self.carried = json.loads(props.get(PROP + "columns", "[]"))
        self.dynamic = json.loads(props.get(PROP + "dynamic", "[]"))
        self.ledger = Ledger(client, alias)
        self.entry = self.ledger.get(self.name)


def _check_applicable(col: _Collection, alias: str, out: Storage, rec: ChainRecord) -> bool:
    """True to apply ``rec``; False when the collection holds its state already; LoadError when it cannot."""
    e = col.entry
    if e is None:
        raise LoadError(f"{col.name} (behind alias {alias!r}) has no record of the chain it holds (loaded before "
                        "in-place loads existed, or not by jinabatch): load this delta into a new collection with "
                        "`jinabatch load --full`")
    if e.pending is not None and not (e.pending.op == "apply" and e.pending.delta.id == rec.id):
        raise LoadError(f"{col.name}: an in-place {e.pending.op} of {e.pending.delta.uri} did not finish; finish it "
                        f"first ({'rerun its load' if e.pending.op == 'apply' else 'rerun the rollback'})")
    if e.pending is not None:
        log.info("%s: finishing the apply of %s a killed load started", col.name, out.uri)
        return True
    if e.state == rec.state:
        return False
    if e.state != rec.of_state:
        raise LoadError(f"{out.uri} is a delta of {rec.of_output.uri if rec.of_output else '?'} (state "
                        f"{rec.of_state}), but alias {alias!r} serves {col.name}, which holds state {e.state} (loaded "
                        f"from {e.source}), a state its chain never had: refused — load this one into a new "
                        "collection with `jinabatch load --full`, or point the alias at a collection of this chain")
    return True


def apply_delta(target: Target, ms: MilvusSettings, out: Storage, rec: ChainRecord, progress: bool) -> LoadReport:
    """Apply the delta ``out`` (its ``_chain.json`` is ``rec``) to the collection behind the alias, verified."""
    alias = ms.collection
    col = _Collection(target, alias)
    t0 = time.monotonic()
    if not _check_applicable(col, alias, out, rec):
        log.info("%s already holds %s's state (%s): nothing to do", col.name, out.uri, rec.state)
        return LoadReport(collection=alias, physical=col.name, rows=col.entry.rows, mode="upsert", how="unchanged",
                          seconds=0.0, previous=col.name, state=rec.state)
    delta = AppliedDelta(uri=out.uri, id=rec.id, state=rec.state, of_state=rec.of_state or "",
                         rows_before=rec.rows_before, rows=rec.rows, new=rec.new, changed=rec.changed,
                         deleted=rec.deleted)
    col.ledger.put(col.entry.model_copy(update={"pending": PendingOp(op="apply", delta=delta)}))
    shards = delta_shards(out)
    deleted = deleted_ids(out).to_pylist()
    with tqdm(total=rec.rows_written, unit="rows", desc="load (in place)", disable=not progress) as bar:
        sent = upsert_shards(target, col.name, shards, col.dim, ms.insert_batch_mb, bar.update, col.dynamic)
    delete_ids(target, col.name, deleted)
    t_write = time.monotonic() - t0
    why = f"{rec.rows_before} + {rec.new} added − {rec.deleted} deleted by {out.uri}"
    checked = _verify(target, col, rec.rows, why, lambda: verify_sample(
        target.client, col.name, shards, col.id_name, col.carried) if shards else None, deleted, "the delta deleted it")
    entry = LedgerEntry(physical=col.name, state=rec.state, rows=rec.rows, source=out.uri,
                        applied=[*col.entry.applied, delta])
    col.ledger.put(entry)
    log.info("applied %s in place to %s: %d rows upserted, %d deleted, %d rows now (writes %.1fs)", out.uri, col.name,
             sent, len(deleted), rec.rows, t_write)
    phases = [{"phase": "upsert + delete", "seconds": round(t_write, 3)},
              {"phase": "verify", "seconds": round(time.monotonic() - t0 - t_write, 3)}]
    return LoadReport(collection=alias, physical=col.name, rows=rec.rows, mode="upsert", how="in place", seconds=0.0,
                      previous=col.name, rows_sent=sent, rows_deleted=len(deleted), state=rec.state, delta=delta,
                      verified_ids=checked, phases=phases)


def held_state(target: Target, alias: str) -> str | None:
    """The chain state the collection behind ``alias`` holds (None: no alias, or no record of it)."""
    if alias_target(target.client, alias) is None:
        return None
    e = _Collection(target, alias).entry
    return e.state if e is not None and e.pending is None else None


def apply_chain(target: Target, ms: MilvusSettings, out: Storage, rec: ChainRecord, settings: StorageSettings,
                progress: bool) -> LoadReport:
    """Apply the delta ``out`` in place, after the deltas of its chain the collection does not hold yet (a night
    whose load never ran), each verified in turn; the report is the last one's, with every write counted."""
    col = _Collection(target, ms.collection)
    todo = [(out, rec)]
    e = col.entry
    if e is not None and (e.pending is None or e.pending.op == "apply"):
        have = e.pending.delta.of_state if e.pending is not None else e.state
        members = chain_members(out, settings)
        at = [i for i, (_, m) in enumerate(members) if m.state == have]
        if at and at[-1] < len(members) - 1:
            todo = members[at[-1] + 1:]
            if len(todo) > 1:
                log.info("%s holds %s's state: applying %d deltas in order up to %s", col.name,
                         members[at[-1]][0].uri, len(todo), out.uri)
    reports = [apply_delta(target, ms, st, r, progress) for st, r in todo]
    last = reports[-1]
    last.rows_sent, last.rows_deleted = sum(r.rows_sent for r in reports), sum(r.rows_deleted for r in reports)
    return last


def _verify(target: Target, col: _Collection, rows: int, why: str, sample, gone: list, gone_why: str) -> int:
    """count(*) == ``rows`` (``why`` says where that comes from), ``sample()`` rows equal, ``gone`` ids absent."""
    got = count_rows(target.client, col.name)
    if got != rows:
        raise LoadError(f"{col.name} holds {got} rows but must hold {rows} ({why}); the in-place load is "
                        "unverified — rerun it (it finishes the same writes) or roll back")
    checked = sample()
    n = absent(target.client, col.name, gone, col.id_name, gone_why)
    return (checked.ids if checked is not None else 0) + n


def _prior_rows(st: Storage, settings: StorageSettings, prior: pa.Table) -> pa.Table | None:
    """The previous rows (from the chain's shards) of the ids in ``prior`` (id, code)."""
    members = [m for m, _ in chain_members(st, settings)]
    codes = np.sort(prior["code"].to_numpy())
    parts = []
    keys = np.stack([codes >> 56, (codes >> 32) & ((1 << 24) - 1)], axis=1) if len(codes) else np.empty((0, 2))
    for k, shard in sorted({(int(a), int(b)) for a, b in keys}):
        rows = codes[(keys[:, 0] == k) & (keys[:, 1] == shard)] & M32
        table = pq.read_table(members[k - 1].open_input_file(f"shards/shard-{shard:05d}.parquet"))
        parts.append(table.take(pa.array(rows)).replace_schema_metadata(None))
    return pa.concat_tables(parts) if parts else None


def undo_delta(target: Target, ms: MilvusSettings, settings: StorageSettings) -> LoadReport | None:
    """Roll back the last in-place load of the alias's collection (or finish an undo a killed rollback started);
    None when its last load was a whole one (the alias then moves back, as for any full load)."""
    if alias_target(target.client, ms.collection) is None:
        return None  # nothing behind the alias: the alias rollback says so
    col = _Collection(target, ms.collection)
    e = col.entry
    if e is None or (e.pending is None and not e.applied):
        return None
    delta = e.pending.delta if e.pending is not None else e.applied[-1]
    st = Storage.open(delta.uri, settings)
    rec = read_chain(st)
    if rec is None or rec.id != delta.id:
        raise LoadError(f"cannot roll back {col.name} in place: the delta {delta.uri} it applied is "
                        f"{'gone' if rec is None else 'another output now'}; load a full output instead")
    t0 = time.monotonic()
    col.ledger.put(e.model_copy(update={"pending": PendingOp(op="undo", delta=delta)}))
    prior = pq.read_table(st.open_input_file(PRIOR))
    old = _prior_rows(st, settings, prior)
    sent = sum(upsert_batch(target, col.name, rb, col.dim, ms.insert_batch_mb, None, col.dynamic, where=st.uri)
               for rb in (old.to_batches(max_chunksize=8192) if old is not None else []))
    added = _added_ids(st, prior, col.id_name)
    delete_ids(target, col.name, added)
    checked = _verify(target, col, delta.rows_before, f"the rows before {delta.uri} was applied",
                      lambda: compare_rows(target.client, col.name, old, col.id_name, col.carried,
                                           f"the chain before {delta.uri}") if old is not None else None,
                      added, f"{delta.uri} added it and was rolled back")
    col.ledger.put(LedgerEntry(physical=col.name, state=delta.of_state, rows=delta.rows_before, source=delta.uri,
                               applied=[a for a in e.applied if a.id != delta.id]))
    log.info("rolled back %s in place on %s: %d rows restored, %d removed", delta.uri, col.name, sent, len(added))
    return LoadReport(collection=ms.collection, physical=col.name, rows=delta.rows_before, mode="rollback",
                      how="in place", seconds=round(time.monotonic() - t0, 3), previous=col.name, rows_sent=sent,
                      rows_deleted=len(added), state=delta.of_state, delta=delta, verified_ids=checked)


def _added_ids(st: Storage, prior: pa.Table, id_name: str) -> list[Any]:
    """Ids of the delta's rows that were new (not in ``prior``)."""
    ids = [pq.read_table(f.storage.open_input_file(f.sub), columns=[id_name]).column(0) for f in delta_shards(st)]
    if not ids:
        return []
    every = pa.chunked_array([c for a in ids for c in a.chunks]).combine_chunks()
    return every.filter(pc.invert(pc.is_in(every, value_set=prior["id"].combine_chunks().cast(every.type)))).to_pylist()

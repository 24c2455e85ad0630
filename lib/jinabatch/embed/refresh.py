"""The embed stage's part of a refresh: which shards a delta need not run, and the output's ``_chain.json``.

* ``unchanged_shards`` — with a delta, a shard whose every row is reused (``_plan/reuse.parquet``) has nothing to
  send and nothing to write: it is booked as done without a task, so a refresh that changed nothing starts no
  Ray, no server and sends no request.
* ``finish_chain`` — once the run finished: what the output is in its chain (``embed.chain``), with the counts a
  refresh reports (reused, new, changed, deleted, rows and bytes written). A changed row the API refused (a dead
  letter) has no new vector, and its old one must not stay live: it is booked as deleted.
"""
from __future__ import annotations

import hashlib
import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..config import Config
from ..observe.records import CHAIN, ChainRecord, OutputRef, ShardRecord
from ..observe.report import EmbedReport
from ..storage import Storage
from .chain import DELETED, PRIOR, bytes_under, compaction_advice, read_chain, write_table
from .incremental import REUSE
from .plan import Plan, Shard
from .shards import DEAD_LETTER, SHARDS

__all__ = ["unchanged_shards", "finish_chain", "is_delta"]

log = logging.getLogger("jinabatch.embed")


def is_delta(plan: Plan) -> bool:
    """The run writes a delta: output.previous under the same embedding key, output.write = "delta"."""
    return plan.reuse is not None and not plan.reuse.note and plan.reuse.kind == "delta"


def unchanged_shards(config: Config, plan: Plan, out: Storage, todo: list[Shard]) -> list[ShardRecord]:
    """Records ("skipped") of the shards of ``todo`` whose every row a delta reuses: nothing to run for them."""
    if not is_delta(plan) or not todo or out.stat(REUSE) is None:
        return []
    pos = pq.read_table(out.open_input_file(REUSE), columns=["pos"]).column("pos").to_numpy()
    starts = np.array([s.start for s in todo], np.int64)
    stops = np.array([s.stop for s in todo], np.int64)
    reused = np.searchsorted(pos, stops) - np.searchsorted(pos, starts)
    fp = config.fingerprint()
    return [ShardRecord(shard=s.index, name=s.name, status="skipped", rows_in=s.rows, rows_embedded=s.rows,
                        rows_reused=s.rows, shard_key=s.key, fingerprint=fp)
            for s, n in zip(todo, reused.tolist()) if n == s.rows and s.rows]


def _dead_changed(out: Storage) -> int:
    """Book changed rows that ended up dead letters as deleted in ``_delta/`` (their old vector is stale); how many."""
    dead = [f.path for f in out.list(DEAD_LETTER) if f.path.endswith(".parquet")]
    if not dead:
        return 0
    ids = pa.concat_arrays([pq.read_table(out.open_input_file(p), columns=["id"]).column("id").combine_chunks()
                            for p in dead])
    prior = pq.read_table(out.open_input_file(PRIOR))
    hit = pc.and_(pc.invert(prior["deleted"]), pc.is_in(prior["id"], value_set=ids.cast(prior["id"].type)))
    n = pc.sum(hit).as_py() or 0
    if n:
        prior = prior.set_column(2, "deleted", pc.or_(prior["deleted"], hit))
        write_table(out, PRIOR, prior)
        write_table(out, DELETED, pa.table({"id": prior.filter(prior["deleted"])["id"]}))
    return n


def _output_id(config: Config, plan: Plan, out: Storage, kind: str) -> str:
    """The same run of the same corpus gets the same id (a rerun that finds it done), anything else a new one."""
    of = plan.reuse.of_id if plan.reuse is not None else ""
    key = f"{out.uri}|{plan.fingerprint}|{config.fingerprint()}|{of}|{kind}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def finish_chain(config: Config, plan: Plan, out: Storage, rep: EmbedReport) -> ChainRecord:
    """Write ``_chain.json`` for the finished run and put it (and the rows its shards hold) in ``rep``."""
    delta = is_delta(plan)
    kind = "delta" if delta else "full"
    oid = _output_id(config, plan, out, kind)
    written = rep.rows_embedded - (rep.rows_reused if delta else 0)
    rec = ChainRecord(kind=kind, id=oid, state=oid, members=[OutputRef(uri=out.uri, id=oid)],
                      embedding=config.embedding_key(), rows=rep.rows_embedded, rows_written=written,
                      reused=rep.rows_reused)
    if delta:
        r = plan.reuse
        dead = _dead_changed(out)
        changed = r.changed - dead
        rec = rec.model_copy(update=dict(
            of_output=OutputRef(uri=r.previous, id=r.of_id), of_state=r.of_state, rows_before=r.rows_before,
            members=[OutputRef(**m) for m in r.members] + [OutputRef(uri=out.uri, id=oid)],
            changed=changed, new=written - changed, deleted=r.dropped + dead))
        if not written and not rec.deleted:  # nothing changed: it stands for the state it is a delta of
            rec.state = r.of_state
    rec.bytes_written = bytes_under(out, SHARDS, DEAD_LETTER, "_delta")
    out.write_json(CHAIN, rec.to_json())
    rep.rows_written = written
    rep.chain = rec
    if delta:
        advice = compaction_advice([m for m in (_member(config, ref) for ref in rec.members[:-1]) if m] + [rec])
        if advice:
            log.warning("%s: %s; fold the chain into one output (jinabatch compact CONFIG) before the next refresh",
                        out.uri, advice)
    return rec


def _member(config: Config, ref: OutputRef) -> ChainRecord | None:
    return read_chain(Storage.open(ref.uri, config.storage))

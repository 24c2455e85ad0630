"""The embed stage's part of a refresh: the output's ``_chain.json``.

A delta's shards hold only the rows that are not reused (``plan.cut_sparse``), so a refresh that changed nothing
has no shard: it starts no Ray, no server and sends no request.
* ``finish_chain`` — once the run finished: what the output is in its chain (``embed.chain``), with the counts a
  refresh reports (reused, new, changed, deleted, rows and bytes written). A changed row the API refused (a dead
  letter) has no new vector, and its old one must not stay live: it is booked as deleted.
"""
from __future__ import annotations

import hashlib
import logging

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..config import Config
from ..observe.records import CHAIN, ChainRecord, OutputRef
from ..observe.report import EmbedReport
from ..storage import Storage
from .chain import DELETED, PRIOR, bytes_under, compaction_advice, read_chain, write_table
from .plan import Plan
from .shards import DEAD_LETTER, SHARDS

__all__ = ["finish_chain", "is_delta"]

log = logging.getLogger("jinabatch.embed")


def is_delta(plan: Plan) -> bool:
    """The run writes a delta: output.previous under the same embedding key, output.write = "delta"."""
    return plan.reuse is not None and plan.reuse.sparse


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

"""What a rerun can skip: finished shards of this plan, found with one listing of the output.

A shard is finished when its file exists and its footer says it was made from the same pieces (files,
fingerprints, row ranges) with the same settings. The output is listed once; footers are read only for
shards the run log does not already vouch for (``known``: a record of the shard finishing with the same
key), in parallel threads — on object storage a footer is a round trip. Shard files that belong to no shard
of this plan (the corpus changed and was re-planned, so there are fewer or different shards) are *stale*:
the driver deletes them, with their dead letters, before it schedules anything, so the load stage never
imports a row twice.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..config import Config
from ..observe.records import ShardRecord
from ..storage import Storage
from .plan import Plan, Shard
from .shards import DEAD_LETTER, SHARDS, read_shard_meta, shard_path

__all__ = ["Resume", "find_finished"]


@dataclass
class Resume:
    """What a rerun skips (records of the finished shards) and deletes first (stale files)."""

    done: dict[int, ShardRecord] = field(default_factory=dict)  # shard index -> its "skipped" record for this run
    stale: list[str] = field(default_factory=list)  # paths under the output to delete before the run


def _skipped(shard: Shard, fingerprint: str, *, embedded: int, reasons: dict[str, int],
             kept: dict[str, int]) -> ShardRecord:
    """The record a rerun logs for ``shard``, finished before: its counts (``kept``: ``Tally.KEPT``), under this
    plan's key and settings."""
    return ShardRecord(shard=shard.index, name=shard.name, status="skipped", rows_in=shard.rows, rows_embedded=embedded,
                       reasons=reasons, shard_key=shard.key, fingerprint=fingerprint, **kept)


def _from_footer(shard: Shard, fingerprint: str, meta: dict[str, Any]) -> ShardRecord:
    """The record of a shard finished by a run whose log did not say so, from its footer (``ShardWriter.commit``)."""
    return _skipped(shard, fingerprint, embedded=int(meta.get("rows_embedded", meta["rows"])),
                    reasons=meta.get("reasons", {}),
                    kept={k: int(meta.get(k, 0)) for k in ShardRecord.KEPT})


def find_finished(config: Config, plan: Plan, out: Storage, known: dict[int, ShardRecord] | None = None,
                  threads: int = 32) -> Resume:
    """Which of ``plan``'s shards are finished in ``out``, as the records a rerun logs for them ("skipped"), and
    which files are stale; ``known``: shard -> its latest run-log record saying it was done."""
    known = known or {}
    by_name = {s.name: s for s in plan.shards}
    files = {f.path.rsplit("/", 1)[-1].removesuffix(".parquet"): f for f in out.list(SHARDS)
             if f.path.endswith(".parquet")}
    res = Resume()
    check = []
    fingerprint = config.fingerprint()
    for name in files:
        shard = by_name.get(name)
        if shard is None:
            res.stale.append(shard_path(name))
            continue
        rec = known.get(shard.index)
        if rec and rec.shard_key == shard.key and rec.fingerprint == fingerprint:
            res.done[shard.index] = _skipped(shard, fingerprint, embedded=rec.rows_embedded, reasons=rec.reasons,
                                             kept={k: getattr(rec, k) for k in rec.KEPT})
        else:
            check.append(shard)

    def footer(shard):
        return shard, read_shard_meta(out, shard_path(shard.name))

    workers = max(1, min(threads if out.remote else 8, len(check)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for shard, meta in pool.map(footer, check):
            if meta and meta.get("shard_key") == shard.key and meta.get("fingerprint") == fingerprint:
                res.done[shard.index] = _from_footer(shard, fingerprint, meta)
            else:
                res.stale.append(shard_path(shard.name))
    for path in list(res.stale):
        res.stale.append(f"{DEAD_LETTER}/{path.rsplit('/', 1)[-1]}")
    for f in out.list(DEAD_LETTER):  # dead letters of shards this plan no longer has
        if f.path.rsplit("/", 1)[-1].removesuffix(".parquet") not in by_name and f.path not in res.stale:
            res.stale.append(f.path)
    return res

"""What the embed driver writes while a run goes, at O(1) work and I/O per finished shard.

Under the output root (a local folder or an ``s3://`` prefix, through ``Storage``)::

    _manifest.json        small snapshot for people and tools: state, counts, rates, limits, where the logs are;
                          rewritten at most every ``manifest_seconds`` (and at start and finish)
    _progress/*.jsonl     one record per finished (or skipped) shard: rows, tokens, node, key, start/end, lane
    _timeseries/*.jsonl   one sample every ``sample_seconds``: cumulative tokens, requests, 429s, retries, rows,
                          workers active, per key

Both logs are ``ChunkLog``s: records are buffered in memory and written as a new object at most every
``flush_seconds``; loose chunks are merged every ``compact_every`` chunks and everything is merged into one
object at ``finish``. Finishing a shard only updates counters and a buffer; nothing here grows with the
number of shards except the logs themselves. Samples hold cumulative counters, so the last one of a run is
its totals and the per-interval differences add up to them. Nothing here ever sees the API key: keys are
named by index ("key0", ...).
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, Callable, Iterator

from ..errors import StorageError
from ..storage import Storage
from .chunklog import ChunkLog
from .records import (
    MANIFEST,
    PROGRESS,
    TIMESERIES,
    Counters,
    Failure,
    Manifest,
    Rates,
    ReportSummary,
    RowCounts,
    RunMeta,
    RunningShard,
    Sample,
    ShardCounts,
    ShardRecord,
    read_progress,
)
from .report import REPORT, EmbedReport
from .report_html import HTML_NAME, write_report_html

__all__ = ["RunLog"]

log = logging.getLogger("jinabatch.embed")

RATE_WINDOW_S = 60.0  # "current" rates in the manifest are over this much of the recent past
LOGS = {"progress": PROGRESS + "/", "timeseries": TIMESERIES + "/", "report": REPORT, "html": HTML_NAME,
        "format": "JSON lines in c-<seq>.jsonl chunks and s-<lo>-<hi>.jsonl segments, read in sequence order"}


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class RunLog:
    """The driver's bookkeeping. Call order: ``start`` → (``shard_started`` / ``shard_finished`` / ``tick``)* →
    ``finish``. Storage errors while the run goes are logged and retried at the next flush (a progress write
    must not stop an hours-long run); ``finish`` raises them. ``meta``: the run's ``RunMeta`` (or its JSON)."""

    def __init__(self, out: Storage, meta: RunMeta | Mapping[str, Any], *, sample_seconds: float = 5.0,
                 flush_seconds: float = 5.0, manifest_seconds: float = 10.0, clock: Callable[[], float] = time.time,
                 compact_every: int = 256):
        self.out, self.meta, self.clock = out, RunMeta.of(meta), clock
        self.sample_seconds, self.flush_seconds, self.manifest_seconds = sample_seconds, flush_seconds, manifest_seconds
        self.progress = ChunkLog(out, PROGRESS, compact_every=compact_every)
        self.series = ChunkLog(out, TIMESERIES, compact_every=compact_every)
        self.run = ""
        self.state = "new"
        self.t_start = 0.0
        self.counts = {"done": 0, "skipped": 0, "failed": 0}
        self.rows = RowCounts()  # in / embedded / dead_letter of finished and skipped shards
        self.rows_skipped = 0
        self.running: dict[int, tuple[RunningShard, float, int]] = {}  # shard -> (its entry, since, lane)
        self._free_lanes: list[int] = []
        self._lanes = 0
        self.failures: deque[Failure] = deque(maxlen=5)
        self.totals = Counters()  # cumulative, this run, from the coordinator
        # every key of the pool from the first sample on (zeros until the coordinator reports), named by index
        self.per_key: dict[str, Counters] = {k: Counters() for k in self.meta.keys}
        self.workers_active = 0
        self._recent: deque[tuple[float, Counters]] = deque()  # samples inside RATE_WINDOW_S
        self._last_sample_t: float | None = None
        self._last_sampled: Counters | None = None
        self._last_flush = self._last_manifest = 0.0
        self.report: EmbedReport | None = None

    # -- the driver's calls ------------------------------------------------------------------------
    def start(self, skipped: list[ShardRecord | Mapping[str, Any]]) -> None:
        """Manifest state "running"; ``skipped``: records of the shards already done — counted and recorded once."""
        now = self.clock()
        self.t_start, self.state = now, "running"
        self.run = datetime.fromtimestamp(now, timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        self.progress.open()
        self.series.open()
        for s in skipped:
            rec = ShardRecord.of(s).model_copy(update={"run": self.run, "status": "skipped"})
            self.progress.append(rec.to_json())
            self._add_rows(rec)
            self.rows_skipped += rec.rows_in
        self.counts["skipped"] = len(skipped)
        self._sample(now, force=True)
        self._io(now, force=True)

    def shard_started(self, shard: int, name: str, node: str | None = None) -> None:
        """Shard ``shard`` (named ``name``) started on a free worker slot (the timeline's lane)."""
        lane = self._free_lanes.pop(0) if self._free_lanes else self._take_lane()
        since = self.clock()
        self.running[shard] = (RunningShard(shard=shard, name=name, node=node, since=_iso(since)), since, lane)

    def shard_finished(self, record: ShardRecord | Mapping[str, Any]) -> None:
        """A shard's record (status done or failed): counted, and logged with its run, start, end and lane."""
        now = self.clock()
        rec = ShardRecord.of(record)
        started = self.running.pop(rec.shard, None)
        update: dict[str, Any] = {"run": self.run, "finished": round(now, 3)}
        if started:
            _, since, lane = started
            update.update(started=rec.started if rec.started is not None else round(since, 3),
                          lane=rec.lane if rec.lane is not None else lane)
            self._free_lanes.append(lane)
            self._free_lanes.sort()
        rec = rec.model_copy(update=update)
        if rec.status == "done":
            self.counts["done"] += 1
            self._add_rows(rec)
        else:
            self.counts["failed"] += 1
            self.failures.append(Failure(shard=rec.name or rec.shard, error=str(rec.error)[:300]))
        self.progress.append(rec.to_json())
        self._io(now)

    def tick(self, totals: Counters | Mapping[str, Any], per_key: Mapping[str, Counters | Mapping[str, Any]],
             workers_active: int) -> None:
        """The coordinator's cumulative counters (every ~0.5 s): sample, flush and snapshot when each is due."""
        now = self.clock()
        self.totals = Counters.of(totals)
        # keys no task has registered with yet stay at zero (the coordinator learns of a key at its first task)
        self.per_key = {**dict.fromkeys(self.meta.keys, Counters()), **{k: Counters.of(v) for k, v in per_key.items()}}
        self.workers_active = workers_active
        self._sample(now)
        self._io(now)

    def finish(self, report: EmbedReport | Mapping[str, Any], state: str) -> None:
        """Final sample and flush, every chunk merged into one object per log, the final manifest, and
        ``_report.html`` (a failure to draw it is logged, never raised)."""
        now = self.clock()
        self.report, self.state = EmbedReport.of(report), state
        billed = ("tokens", "requests", "http_429", "retries")  # what the key was billed, whatever the last tick
        self.totals = self.totals.model_copy(update={k: max(getattr(self.totals, k), getattr(self.report, k))
                                                     for k in billed})
        for name, c in self.report.keys.items():  # per key the same (the endpoint check included)
            if name in self.per_key:
                mine = self.per_key[name]
                self.per_key[name] = mine.model_copy(update={k: max(getattr(mine, k), getattr(c, k)) for k in billed})
        self.workers_active = 0
        self.running.clear()
        self._sample(now, force=True)
        for chunks in (self.progress, self.series):
            chunks.flush()
            chunks.compact(everything=True)
        manifest = self.manifest(now)
        self.out.write_json(MANIFEST, manifest.to_json())
        try:
            write_report_html(self.out, report=self.report, manifest=manifest)
        except Exception as e:  # the report must not fail a finished run
            log.warning("could not write _report.html: %s: %s", type(e).__name__, e)

    @contextlib.contextmanager
    def failing(self, report: Callable[[], EmbedReport | Mapping[str, Any]]) -> Iterator[None]:
        """Around the driver's work: an exception (Ctrl+C included) ends the run as "failed" with what was done
        recorded, then goes on up; an error writing that never hides it."""
        try:
            yield
        except BaseException:
            try:
                self.finish(report(), "failed")
            except Exception as e:
                log.warning("could not record the failed run: %s: %s", type(e).__name__, e)
            raise

    @staticmethod
    def read_done(out: Storage) -> dict[int, ShardRecord]:
        """Shard index → its latest record saying it is done (finished, or skipped as already done)."""
        return {r.shard: r for r in read_progress(out) if r.status in ("done", "skipped")}

    # -- the snapshot ------------------------------------------------------------------------------
    def manifest(self, now: float | None = None) -> Manifest:
        """The snapshot as it stands at ``now``."""
        now = self.clock() if now is None else now
        plan, c, t = self.meta.plan, self.counts, self.totals
        running = len(self.running)
        pending = max(0, plan.shards_total - c["done"] - c["skipped"] - c["failed"] - running)
        rows = self.rows.model_copy(update={"total": plan.rows_total, "skipped": self.rows_skipped,
                                            "processed": t.rows, "so_far": self.rows_skipped + t.rows})
        return Manifest(
            **self.meta.model_dump(), state=self.state, run=self.run, started_at=_iso(self.t_start),
            updated_at=_iso(now), updated_ts=round(now, 3), elapsed_s=round(now - self.t_start, 1),
            shards=ShardCounts(total=plan.shards_total, done=c["done"], skipped=c["skipped"], running=running,
                               failed=c["failed"], pending=pending),
            rows=rows, tokens=t.tokens, requests=t.requests, http_429=t.http_429, retries=t.retries,
            per_key=self.per_key, workers_active=self.workers_active, rate=self.rates(),
            running=[r for r, _, _ in sorted(self.running.values(), key=lambda r: r[0].shard)],
            failures=list(self.failures), logs=LOGS,
            report=None if self.report is None else ReportSummary.of(self.report))

    def rates(self) -> Rates:
        """Per-minute rates over the recent window of samples (0 before two samples)."""
        if len(self._recent) < 2:
            return Rates()
        (t0, a), (t1, b) = self._recent[0], self._recent[-1]
        dt = max(1e-9, t1 - t0)
        return Rates(window_s=round(dt, 1), tokens_per_min=round((b.tokens - a.tokens) / dt * 60, 1),
                     requests_per_min=round((b.requests - a.requests) / dt * 60, 2),
                     rows_per_s=round((b.rows - a.rows) / dt, 2),
                     http_429_per_min=round((b.http_429 - a.http_429) / dt * 60, 2))

    # -- internals ---------------------------------------------------------------------------------
    def _take_lane(self) -> int:
        self._lanes += 1
        return self._lanes - 1

    def _add_rows(self, rec: ShardRecord) -> None:
        self.rows.in_ += rec.rows_in
        self.rows.embedded += rec.rows_embedded
        self.rows.dead_letter += rec.rows_dead_letter

    def _sample(self, now: float, force: bool = False) -> None:
        if not force and self._last_sample_t is not None and now - self._last_sample_t < self.sample_seconds:
            return
        if force and self._last_sample_t == now and self._last_sampled == self.totals:
            return
        # one key's counters are the run's: not repeated in every sample
        s = Sample(run=self.run, t=round(now, 3), elapsed=round(now - self.t_start, 3), **self.totals.model_dump(),
                   workers=self.workers_active, shards_done=self.counts["done"], shards_failed=self.counts["failed"],
                   keys=self.per_key if len(self.per_key) > 1 else None)
        self.series.append(s.to_json())
        self._last_sample_t, self._last_sampled = now, self.totals
        self._recent.append((now, self.totals))
        while len(self._recent) > 2 and now - self._recent[1][0] >= RATE_WINDOW_S:
            self._recent.popleft()

    def _io(self, now: float, force: bool = False) -> None:
        try:
            if force or now - self._last_flush >= self.flush_seconds:
                self._last_flush = now
                self.progress.flush()
                self.series.flush()
            if force or now - self._last_manifest >= self.manifest_seconds:
                self._last_manifest = now
                self.out.write_json(MANIFEST, self.manifest(now).to_json())
        except StorageError as e:  # keep the buffers; the next flush tries again
            log.warning("bookkeeping write failed (retried at the next flush): %s", e)

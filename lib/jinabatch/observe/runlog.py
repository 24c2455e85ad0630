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
from datetime import datetime, timezone
from typing import Any, Callable, Iterator

from ..errors import StorageError
from ..storage import Storage
from .chunklog import ChunkLog

__all__ = ["RunLog", "PROGRESS", "TIMESERIES", "MANIFEST", "COUNTERS", "read_progress", "read_timeseries"]

log = logging.getLogger("jinabatch.embed")

MANIFEST, PROGRESS, TIMESERIES = "_manifest.json", "_progress", "_timeseries"
COUNTERS = ("rows", "tokens", "requests", "http_429", "retries")
RATE_WINDOW_S = 60.0  # "current" rates in the manifest are over this much of the recent past
FORMAT = 1


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def read_progress(out: Storage, run: str | None = None) -> list[dict[str, Any]]:
    """Shard records in write order (of one run if ``run`` is given)."""
    return [r for r in ChunkLog.read(out, PROGRESS) if run is None or r.get("run") == run]


def read_timeseries(out: Storage, run: str | None = None) -> list[dict[str, Any]]:
    """Samples in time order (of one run if ``run`` is given)."""
    return [r for r in ChunkLog.read(out, TIMESERIES) if run is None or r.get("run") == run]


class RunLog:
    """The driver's bookkeeping. Call order: ``start`` → (``shard_started`` / ``shard_finished`` / ``tick``)* →
    ``finish``. Storage errors while the run goes are logged and retried at the next flush (a progress write
    must not stop an hours-long run); ``finish`` raises them."""

    def __init__(self, out: Storage, meta: dict[str, Any], *, sample_seconds: float = 5.0, flush_seconds: float = 5.0,
                 manifest_seconds: float = 10.0, clock: Callable[[], float] = time.time, compact_every: int = 256):
        self.out, self.meta, self.clock = out, dict(meta), clock
        self.sample_seconds, self.flush_seconds, self.manifest_seconds = sample_seconds, flush_seconds, manifest_seconds
        self.progress = ChunkLog(out, PROGRESS, compact_every=compact_every)
        self.series = ChunkLog(out, TIMESERIES, compact_every=compact_every)
        self.run = ""
        self.state = "new"
        self.t_start = 0.0
        self.counts = {"done": 0, "skipped": 0, "failed": 0}
        self.rows = {"in": 0, "embedded": 0, "dead_letter": 0}  # of finished and skipped shards
        self.rows_skipped = 0
        self.running: dict[int, dict[str, Any]] = {}
        self._free_lanes: list[int] = []
        self._lanes = 0
        self.failures: deque[dict[str, Any]] = deque(maxlen=5)
        self.totals = {k: 0 for k in COUNTERS}  # cumulative, this run, from the coordinator
        # every key of the pool from the first sample on (zeros until the coordinator reports), named by index
        self.per_key: dict[str, dict[str, int]] = {k: {c: 0 for c in COUNTERS} for k in self.meta.get("keys", [])}
        self.workers_active = 0
        self._recent: deque[tuple[float, dict[str, int]]] = deque()  # samples inside RATE_WINDOW_S
        self._last_sample_t: float | None = None
        self._last_sampled: dict[str, int] | None = None
        self._last_flush = self._last_manifest = 0.0
        self.report: dict[str, Any] | None = None

    # -- the driver's calls ------------------------------------------------------------------------
    def start(self, skipped: list[dict[str, Any]]) -> None:
        """Manifest state "running"; ``skipped``: shards already done ({shard, name, rows_in, rows_embedded,
        rows_dead_letter}) — counted and recorded once."""
        now = self.clock()
        self.t_start, self.state = now, "running"
        self.run = datetime.fromtimestamp(now, timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        self.progress.open()
        self.series.open()
        for s in skipped:
            rec = {**s, "run": self.run, "status": "skipped", "shard": s["shard"], "name": s.get("name"),
                   "rows_in": int(s.get("rows_in", 0)), "rows_embedded": int(s.get("rows_embedded", 0)),
                   "rows_dead_letter": int(s.get("rows_dead_letter", 0))}  # extra fields (shard_key...) kept
            self.progress.append(rec)
            self._add_rows(rec)
            self.rows_skipped += rec["rows_in"]
        self.counts["skipped"] = len(skipped)
        self._sample(now, force=True)
        self._io(now, force=True)

    def shard_started(self, shard: int, name: str, node: str | None = None) -> None:
        lane = self._free_lanes.pop(0) if self._free_lanes else self._take_lane()
        self.running[shard] = {"shard": shard, "name": name, "node": node, "since": self.clock(), "lane": lane}

    def shard_finished(self, record: dict[str, Any]) -> None:
        """``record``: shard, name, status done|failed, rows_in, rows_embedded, rows_dead_letter, tokens,
        requests, http_429, retries, node, key, seconds, error (extra fields are kept)."""
        now = self.clock()
        started = self.running.pop(record["shard"], None)
        rec = {k: v for k, v in record.items() if k not in ("reasons",) or v}
        rec.update(run=self.run, finished=round(now, 3))
        if started:
            rec.setdefault("started", round(started["since"], 3))
            rec.setdefault("lane", started["lane"])
            self._free_lanes.append(started["lane"])
            self._free_lanes.sort()
        status = rec.get("status", "done")
        if status == "done":
            self.counts["done"] += 1
            self._add_rows(rec)
        else:
            self.counts["failed"] += 1
            self.failures.append({"shard": rec.get("name") or rec["shard"], "error": str(rec.get("error"))[:300]})
        self.progress.append(rec)
        self._io(now)

    def tick(self, totals: dict[str, int], per_key: dict[str, dict[str, int]], workers_active: int) -> None:
        """The coordinator's cumulative counters (every ~0.5 s): sample, flush and snapshot when each is due."""
        now = self.clock()
        self.totals = {k: int(totals.get(k, 0)) for k in COUNTERS}
        self.per_key = {k: {c: int(v.get(c, 0)) for c in COUNTERS if c in v} for k, v in per_key.items()}
        self.workers_active = workers_active
        self._sample(now)
        self._io(now)

    def finish(self, report: dict[str, Any], state: str) -> None:
        """Final sample and flush, every chunk merged into one object per log, the final manifest, and
        ``_report.html`` (a failure to draw it is logged, never raised)."""
        now = self.clock()
        self.report, self.state = report, state
        for k in ("tokens", "requests", "http_429", "retries"):  # what the key was billed, whatever the last tick
            self.totals[k] = max(self.totals[k], int(report.get(k, 0) or 0))
        for name, c in (report.get("keys") or {}).items():  # per key the same (the endpoint check included)
            if name in self.per_key:
                for k in ("tokens", "requests", "http_429", "retries"):
                    self.per_key[name][k] = max(self.per_key[name].get(k, 0), int(c.get(k, 0) or 0))
        self.workers_active = 0
        self.running.clear()
        self._sample(now, force=True)
        self.progress.flush()
        self.series.flush()
        self.progress.compact(everything=True)
        self.series.compact(everything=True)
        self.out.write_json(MANIFEST, self.manifest(now))
        try:
            from .report_html import write_report_html

            write_report_html(self.out, report=report, manifest=self.manifest(now))
        except Exception as e:  # the report must not fail a finished run
            log.warning("could not write _report.html: %s: %s", type(e).__name__, e)

    @contextlib.contextmanager
    def failing(self, report: Callable[[], dict[str, Any]]) -> Iterator[None]:
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
    def read_done(out: Storage) -> dict[int, dict[str, Any]]:
        """Shard index → its latest record saying it is done (finished, or skipped as already done)."""
        done: dict[int, dict[str, Any]] = {}
        for r in ChunkLog.read(out, PROGRESS):
            if r.get("status") in ("done", "skipped"):
                done[int(r["shard"])] = r
        return done

    # -- the snapshot ------------------------------------------------------------------------------
    def manifest(self, now: float | None = None) -> dict[str, Any]:
        now = self.clock() if now is None else now
        plan = self.meta.get("plan") or {}
        total = int(plan.get("shards_total", 0))
        running = len(self.running)
        c = self.counts
        rows_total = int(plan.get("rows_total", 0))
        m = {k: self.meta[k] for k in ("fingerprint", "embedding", "limits", "keys", "workers",
                                        "price_per_million_tokens", "plan") if k in self.meta}
        m.update({
            "format": FORMAT, "state": self.state, "run": self.run, "started_at": _iso(self.t_start),
            "updated_at": _iso(now), "updated_ts": round(now, 3), "elapsed_s": round(now - self.t_start, 1),
            "shards": {"total": total, "done": c["done"], "skipped": c["skipped"], "running": running,
                       "failed": c["failed"], "pending": max(0, total - c["done"] - c["skipped"] - c["failed"] - running)},
            "rows": {"total": rows_total, "skipped": self.rows_skipped, "processed": self.totals["rows"],
                     "so_far": self.rows_skipped + self.totals["rows"], **self.rows},
            **{k: self.totals[k] for k in ("tokens", "requests", "http_429", "retries")},
            "per_key": self.per_key, "workers_active": self.workers_active,
            "rate": self.rates(),
            "running": [{k: r[k] for k in ("shard", "name", "node")} | {"since": _iso(r["since"])}
                        for r in sorted(self.running.values(), key=lambda r: r["shard"])],
            "failures": list(self.failures),
            "logs": {"progress": PROGRESS + "/", "timeseries": TIMESERIES + "/", "report": "_report.json",
                     "html": "_report.html", "format": "JSON lines in c-<seq>.jsonl chunks and s-<lo>-<hi>.jsonl "
                                                       "segments, read in sequence order"},
        })
        if self.report is not None:
            m["report"] = {k: self.report.get(k) for k in ("rows_in", "rows_embedded", "rows_dead_letter", "tokens",
                                                            "requests", "http_429", "retries", "duration_s",
                                                            "tokens_per_min", "utilization", "binding_limit",
                                                            "finished")}
        return m

    def rates(self) -> dict[str, float]:
        """Per-minute rates over the recent window of samples (0 before two samples)."""
        if len(self._recent) < 2:
            return {"window_s": 0.0, "tokens_per_min": 0.0, "requests_per_min": 0.0, "rows_per_s": 0.0,
                    "http_429_per_min": 0.0}
        (t0, a), (t1, b) = self._recent[0], self._recent[-1]
        dt = max(1e-9, t1 - t0)
        return {"window_s": round(dt, 1), "tokens_per_min": round((b["tokens"] - a["tokens"]) / dt * 60, 1),
                "requests_per_min": round((b["requests"] - a["requests"]) / dt * 60, 2),
                "rows_per_s": round((b["rows"] - a["rows"]) / dt, 2),
                "http_429_per_min": round((b["http_429"] - a["http_429"]) / dt * 60, 2)}

    # -- internals ---------------------------------------------------------------------------------
    def _take_lane(self) -> int:
        self._lanes += 1
        return self._lanes - 1

    def _add_rows(self, rec: dict[str, Any]) -> None:
        self.rows["in"] += int(rec.get("rows_in", 0))
        self.rows["embedded"] += int(rec.get("rows_embedded", 0))
        self.rows["dead_letter"] += int(rec.get("rows_dead_letter", 0))

    def _sample(self, now: float, force: bool = False) -> None:
        if not force and self._last_sample_t is not None and now - self._last_sample_t < self.sample_seconds:
            return
        if force and self._last_sample_t == now and self._last_sampled == self.totals:
            return
        s = {"run": self.run, "t": round(now, 3), "elapsed": round(now - self.t_start, 3), **self.totals,
             "workers": self.workers_active, "shards_done": self.counts["done"], "shards_failed": self.counts["failed"]}
        if len(self.per_key) > 1:  # one key's counters are the run's: not repeated in every sample
            s["keys"] = self.per_key
        self.series.append(s)
        self._last_sample_t, self._last_sampled = now, dict(self.totals)
        self._recent.append((now, dict(self.totals)))
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
                self.out.write_json(MANIFEST, self.manifest(now))
        except StorageError as e:  # keep the buffers; the next flush tries again
            log.warning("bookkeeping write failed (retried at the next flush): %s", e)

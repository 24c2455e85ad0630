"""The embed stage's driver: plan, skip what is finished, run a Ray task per shard, book the results.

``run_embed``::

    output reachable? → [a model the table does not know, or whose width only an answer gives: the endpoint
    check first, its answer's width completing the config] → plan (embed.plan: corpus listed and checked,
    duplicates found — or the stored plan of the same corpus reused) → settings match the output folder? →
    finished shards found with one listing (embed.resume), stale ones deleted → local Jina server
    (base_url = "local") / the key → the endpoint check (if not done first)
    → Ray: ≤ ray.workers shard tasks in flight (embed.task), each retried by Ray if its worker process dies
    → progress (a bar on a terminal, log lines elsewhere) fed by the coordinator actor → RunLog (a small
      _manifest.json snapshot, _progress/ and _timeseries/ chunk logs) → _report.json, _report.html

Ray is started only when needed: for the distributed duplicate pass of a big corpus, or to embed; a rerun
with nothing left to do starts no service at all (but the endpoint check that comes first for a model the table
does not know). Finishing a shard costs the driver O(1): a record buffered
by the RunLog and, every few seconds, one small new object — never a rewrite of a per-shard list.

The API key reaches workers through the object store (``ray.put``), never through task arguments,
runtime_env or job metadata; object-store credentials never travel at all (every node reads its own).
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time

import pyarrow as pa

from ..config import Config
from ..errors import AuthError, BadRowError, BillingError, ConfigError, JinaBatchError
from ..jina.keys import KeyPool
from ..observe.progress import make_progress
from ..observe.records import BatchCounts, Counters, Limits, Manifest, PlanEstimate, PlanSummary, RunMeta, ShardRecord
from ..observe.report import EmbedReport, ShardFailure
from ..observe.report_html import warm_up
from ..observe.runlog import RunLog
from ..runtime import jina_endpoint, ray_session
from ..storage import Storage
from .chunking import check_late_chunking
from .coordinator import Coordinator
from .estimate import estimate_run
from .plan import PLAN_DIR, Plan, Shard, plan_corpus
from .refresh import finish_chain
from .resume import find_finished
from .result import ShardResult
from .task import shard_task

__all__ = ["run_embed"]

log = logging.getLogger("jinabatch.embed")
FATAL = (AuthError, BadRowError, BillingError, ConfigError)  # stop the whole run: every shard would fail alike
WARM_UP_AFTER_S = 3.0  # _report.html's one-time costs, paid once the workers wait on the API


def _check_settings(config: Config) -> None:
    keys = len(config.jina.api_key_env)
    if config.ray.workers > config.limits.concurrency * keys:  # per key of the pool
        raise ConfigError(f"ray.workers ({config.ray.workers}) is more than limits.concurrency "
                          f"({config.limits.concurrency}) × keys ({keys}): every worker "
                          "needs at least one request in flight; lower ray.workers or raise limits.concurrency")
    if config.jina.late_chunking:
        check_late_chunking(config.corpus)


def _check_output(config: Config, out: Storage) -> None:
    manifest = Manifest.read(out)
    if manifest is None or manifest.fingerprint == config.fingerprint():
        return
    had, now = manifest.embedding or {}, config.embedding_key()
    diff = [f"{k} {had.get(k)!r} there, {now.get(k)!r} here" for k in now if k in had and had.get(k) != now.get(k)]
    if had.get("served_by") == "local stand-in" and now.get("served_by") != "local stand-in":
        why = ("its vectors come from the local stand-in (jina.base_url = \"local\"), not from the real model — they "
               "must never be loaded as the model's")
    else:
        why = "; ".join(diff) or "other corpus or shard settings (columns, rows_per_shard, id/text column)"
    raise ConfigError(f"{out.uri}: holds shards made with other settings ({why}; fingerprint "
                      f"{manifest.fingerprint}, this config {config.fingerprint()}); set output.path to a new "
                      "folder (e.g. for a backfill, with output.previous pointing at this one) or delete the old one")


def _asks_first(config: Config) -> bool:
    """True when the endpoint check must come before the plan: a model the table does not know (a misspelling fails
    there, before anything else) or a width neither configured nor published (the output is made for the answer's)."""
    return not config.jina.spec.known or config.jina.dim is None


def _answered(config: Config, keys: KeyPool) -> Config:
    """``config`` completed with the width the endpoint check answered with, when nothing else gives it."""
    if config.jina.dim is not None:
        return config
    dim = next(p["dim"] for p in keys.probe_spend if p.get("dim"))
    log.info("%s answers with %d-dim vectors (a width neither jina.dimensions nor the model table gives): the output "
             "and its collection are made for %d", config.jina.model, dim, dim)
    return config.answered(dim)


def _limits(config: Config) -> Limits:
    lim = config.limits
    return Limits(rpm=lim.rpm, tpm=lim.tpm, concurrency=lim.concurrency)


def _run_meta(config: Config, plan: Plan, out: Storage, todo: list[Shard]) -> RunMeta:
    estimate = PlanEstimate.of(estimate_run(config, plan, out, todo).to_dict()) if todo else None
    return RunMeta(fingerprint=config.fingerprint(), embedding=config.embedding_key(), limits=_limits(config),
                   keys=[f"key{i}" for i in range(len(config.jina.api_key_env))],
                   price_per_million_tokens=config.jina.price_per_million_tokens, workers=config.ray.workers,
                   plan=PlanSummary(files=len(plan.files), shards_total=len(plan.shards), rows_total=plan.shard_rows,
                                    shards_todo=len(todo), estimate=estimate))


def _new_report(config: Config, plan: Plan, out: Storage) -> EmbedReport:
    j = config.jina
    rep = EmbedReport(shards_total=len(plan.shards), limits=_limits(config), workers=config.ray.workers, model=j.model,
                       task=j.embed_task, dimensions=j.dim, embedding_type=j.wire_type,
                       id_column=config.corpus.id_column, columns=list(config.corpus.columns),
                       fingerprint=config.fingerprint(), output=out.uri, embedding=config.embedding_key(),
                       incremental=plan.reuse.to_dict() if plan.reuse is not None else None)
    if plan.reuse is not None and plan.reuse.sparse:  # a delta's unchanged rows keep their vector in the chain
        rep.rows_embedded = rep.rows_reused = plan.reuse.reused
    return rep


def _skip_finished(config: Config, plan: Plan, out: Storage, rep: EmbedReport) -> tuple[list[Shard], list[ShardRecord]]:
    """(shards to do, records of those already done — folded into ``rep``); stale files of an earlier plan deleted."""
    resume = find_finished(config, plan, out, known=RunLog.read_done(out))
    if resume.stale:
        log.info("removing %d stale file(s) of an earlier plan from %s", len(resume.stale), out.uri)
        out.delete_many(resume.stale)
    skipped = [resume.done[s.index] for s in plan.shards if s.index in resume.done]
    for r in skipped:
        rep.add_shard(r)
    rep.shards_skipped = len(skipped)
    return [s for s in plan.shards if s.index not in resume.done], skipped


def run_embed(config: Config, *, progress: bool | str = True) -> EmbedReport:
    """Run the embed stage; returns the report (also written to ``output.path/_report.json``). ``progress``: as
    ``jinabatch.observe.progress.make_progress`` takes it (True: a bar on a terminal, lines elsewhere)."""
    t_start = time.monotonic()
    _check_settings(config)
    out = Storage.open(config.output.path, config.storage)
    out.check("output.path")
    with contextlib.ExitStack() as stack:
        endpoint = None
        if _asks_first(config):
            endpoint = stack.enter_context(jina_endpoint(config.jina, config.limits, probe=True))
            config = _answered(config, endpoint[1])
        started: list[bool] = []

        def need_ray() -> contextlib.AbstractContextManager:
            if not started:  # one Ray for the duplicate pass and the shard tasks
                stack.enter_context(ray_session(config))
                started.append(True)
            return contextlib.nullcontext()

        t_plan = time.monotonic()
        plan = plan_corpus(config, out, ray_context=need_ray)
        _check_output(config, out)
        rep = _new_report(config, plan, out)
        rep.plan_s = round(time.monotonic() - t_plan, 3)
        todo, skipped = _skip_finished(config, plan, out, rep)
        runlog = RunLog(out, _run_meta(config, plan, out, todo))
        runlog.start(skipped)
        window, fatal = 0.0, None
        if todo:  # else everything is done already: no server, no Ray
            with runlog.failing(lambda: rep):  # a failure to start a service also ends the manifest as "failed"
                if out.abort_multipart_uploads():
                    log.info("aborted uploads an earlier run's killed workers left under %s", out.uri)
                base_url, keys = endpoint or stack.enter_context(jina_endpoint(config.jina, config.limits, probe=True))
                need_ray()
                run = _Schedule(config, plan, out, rep, runlog, progress, rows_before=sum(r.rows_in for r in skipped))
                window, fatal = run.run(todo, base_url, keys)
    rep.duration_s = round(time.monotonic() - t_start, 3)
    rep.finish_rates(window, tpm=config.limits.tpm, rpm=config.limits.rpm)
    rep.finished = rep.shards_failed == 0 and fatal is None
    rep.rows_in = plan.rows  # the corpus's rows, also when shards failed
    if rep.finished:
        finish_chain(config, plan, out, rep)  # _chain.json: full output or delta (embed.refresh)
    rep.write(out)
    runlog.finish(rep, "finished" if rep.finished else "failed")
    if fatal is not None:
        raise fatal
    return rep


def _coordinator_totals(coordinator) -> tuple[Counters, dict[str, Counters]]:
    """What the coordinator counted so far, in all and per key (``key0``...)."""
    import ray

    t = ray.get(coordinator.totals.remote())
    return Counters.of(t), {k: Counters.of(c) for k, c in t["keys"].items()}


class _Schedule:
    """One run of shard tasks on Ray, at most ``ray.workers`` at a time, each result folded into the report and
    the run log as it comes; progress and the run log's samples from the coordinator every half second."""

    def __init__(self, config: Config, plan: Plan, out: Storage, rep: EmbedReport, runlog: RunLog,
                 progress: bool | str, rows_before: int):
        self.config, self.plan, self.out, self.rep, self.runlog = config, plan, out, rep, runlog
        lim = _limits(config)  # batches do not spend the key's TPM: the progress line gives no share of it
        self.bar = make_progress(progress, plan.shard_rows, rows_before=rows_before,
                                 limits=lim.model_copy(update={"tpm": 0}) if config.jina.api == "batch" else lim)
        self.running: dict = {}  # Ray object ref -> shard
        self.fatal: JinaBatchError | None = None
        self._warm: threading.Thread | None = None

    def run(self, todo: list[Shard], base_url: str, keys: KeyPool) -> tuple[float, JinaBatchError | None]:
        """Embed ``todo``; returns (seconds from the first task to the end, the error that stopped the run)."""
        import ray

        lim, cfg = self.config.limits, self.config
        coordinator = ray.remote(num_cpus=0)(Coordinator).remote(
            lim.rpm, lim.tpm, lim.concurrency, cfg.ray.workers, lim.target)
        task = ray.remote(shard_task)
        options = {"num_cpus": cfg.ray.num_cpus_per_task, "max_retries": cfg.ray.max_retries,
                   "retry_exceptions": False, "scheduling_strategy": "SPREAD"}  # use every node's network
        fields = (pa.field(cfg.corpus.id_column, self.plan.id_type),
                  [pa.field(c, t) for c, t in self.plan.column_types.items()])
        key_ref = ray.put(keys.get())  # object store only: never in task specs or job metadata
        queue, t_first = list(reversed(todo)), None
        try:
            while queue or self.running:
                while queue and len(self.running) < cfg.ray.workers and self.fatal is None:
                    s = queue.pop()
                    coordinator.set_remaining.remote(len(queue) + len(self.running) + 1)
                    self.running[task.options(name=f"embed {s.name}", **options).remote(
                        cfg, s, self.out.uri, *fields, base_url, key_ref, coordinator)] = s
                    self.runlog.shard_started(s.index, s.name)
                    t_first = t_first or time.monotonic()
                if not self.running:
                    break
                self._warm_up_page(t_first)
                ready, _ = ray.wait(list(self.running), num_returns=1, timeout=0.5)
                for ref in ready:
                    self._finished(self.running.pop(ref), ref)
                    coordinator.set_remaining.remote(len(queue) + len(self.running))
                if self.fatal is not None:
                    for ref in self.running:
                        ray.cancel(ref, force=True)
                self._tick(coordinator)
            spent = self._tick(coordinator)  # what the key was billed, dead attempts included
        except KeyboardInterrupt:
            for ref in self.running:
                ray.cancel(ref, force=True)
            self._cancel_batches(todo, base_url, keys, "interrupted (Ctrl+C)")
            raise
        finally:
            self.bar.close()
        if self.fatal is not None:
            self._cancel_batches(todo, base_url, keys, f"the run stopped: {type(self.fatal).__name__}")
        t_end = time.monotonic()
        self._bill(*spent, probe=keys.probe_spend)
        if self.out.abort_multipart_uploads():
            log.info("aborted uploads that killed workers left under %s", self.out.uri)
        return (t_end - t_first) if t_first else 0.0, self.fatal

    def _cancel_batches(self, todo: list[Shard], base_url: str, keys: KeyPool, why: str) -> None:
        """Batch mode: cancel (DELETE) every batch the shards' records show running, and record it."""
        if self.config.jina.api != "batch":
            return
        import asyncio

        from ..jina.batch import BatchClient
        from .batches import cancel_recorded

        async def sweep() -> BatchCounts:
            async with BatchClient(self.config.jina, api_key=keys, base_url=base_url) as client:
                return await cancel_recorded(self.config, self.out, todo, client, why)
        try:
            counts = asyncio.run(sweep())
        except JinaBatchError as e:
            log.error("could not cancel the run's batches (%s): they may still run and be billed", e)
            return
        self.rep.batches = self.rep.batches or BatchCounts()
        self.rep.batches.cancelled += counts.cancelled
        if counts.cancelled:
            log.warning("cancelled %d batch(es) still running (%s)", counts.cancelled, why)

    def _finished(self, s: Shard, ref) -> None:
        import ray

        try:
            r: ShardResult = ray.get(ref)
        except Exception as e:  # the task crashed past Ray's retries
            r = ShardResult.failed(s, e)
        self._collect(s, r)
        self.runlog.shard_finished(r.record(shard_key=s.key, fingerprint=self.config.fingerprint()))

    def _collect(self, s: Shard, r: ShardResult) -> None:
        """Fold one shard's result into the report; keep an error that must stop the run."""
        rep = self.rep
        rep.tokens += r.tokens
        rep.raw_tokens += r.raw_tokens
        rep.requests += r.requests
        rep.retries += r.retries
        rep.http_429 += r.http_429
        if r.batches is not None:
            rep.batches = rep.batches or BatchCounts()
            rep.batches.add(r.batches)
        if r.status == "done":
            rep.shards_done += 1
            if r.node:
                rep.shards_by_node[r.node] = rep.shards_by_node.get(r.node, 0) + 1
            rep.add_shard(r)
            return
        rep.shards_failed += 1
        if s.pieces:
            first = s.pieces[0]
            file, row, where = first.file, first.row_start, f"{len(s.pieces)} piece(s) from {first.file} row " \
                                                             f"{first.row_start}"
        else:  # a delta's shard: rows of its to-do list
            file, row, where = f"{PLAN_DIR}/todo.parquet", s.start, f"rows {s.start}-{s.stop - 1} of the to-do list"
        rep.failures.append(ShardFailure(shard=s.name, file=file, row=row, error_type=r.error_type,
                                         error=r.error_text))
        log.error("%s (%s) failed: %s", s.name, where, r.error_text)
        if isinstance(r.exception, FATAL) and self.fatal is None:
            self.fatal = r.exception

    def _tick(self, coordinator) -> tuple[Counters, dict[str, Counters]]:
        totals, per_key = _coordinator_totals(coordinator)
        self.runlog.tick(totals, per_key, len(self.running))
        self.bar.update(totals, shards_done=self.rep.shards_done + self.rep.shards_skipped,
                        shards_total=len(self.plan.shards), workers_active=len(self.running))
        return totals, per_key

    def _bill(self, spent: Counters, per_key: dict[str, Counters], probe: list[dict[str, int]]) -> None:
        """The report's totals are what the coordinator counted (dead attempts too) where that is more, per key
        too (key0...), plus the endpoint check's requests."""
        rep = self.rep
        rep.tokens, rep.requests = max(rep.tokens, spent.tokens), max(rep.requests, spent.requests)
        rep.retries, rep.http_429 = max(rep.retries, spent.retries), max(rep.http_429, spent.http_429)
        rep.add_keys(per_key, probe=probe)

    def _warm_up_page(self, t_first: float) -> None:
        """_report.html's one-time costs (~1.8 s CPU), once the workers are up and waiting on the API rather than
        during their start or after the last shard."""
        if self._warm is None and time.monotonic() - t_first > WARM_UP_AFTER_S:
            self._warm = threading.Thread(target=warm_up, name="report-page-warm-up", daemon=True)
            self._warm.start()

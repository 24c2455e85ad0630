"""The embed stage's driver: plan, skip what is finished, run a Ray task per shard, book the results.

``run_embed``::

    output reachable? → plan (embed.plan: corpus listed and checked, duplicates found — or the stored plan of
    the same corpus reused) → settings match the output folder? → finished shards found with one listing
    (embed.resume), stale ones deleted → local Jina server (base_url = "local") / the key
    → Ray: ≤ ray.workers shard tasks in flight (embed.task), each retried by Ray if its worker process dies
    → progress (a bar on a terminal, log lines elsewhere) fed by the coordinator actor → RunLog (a small
      _manifest.json snapshot, _progress/ and _timeseries/ chunk logs) → _report.json, _report.html

Ray is started only when needed: for the distributed duplicate pass of a big corpus, or to embed; a rerun
with nothing left to do starts no service at all. Finishing a shard costs the driver O(1): a record buffered
by the RunLog and, every few seconds, one small new object — never a rewrite of a per-shard list.

The API key reaches workers through the object store (``ray.put``), never through task arguments,
runtime_env or job metadata; object-store credentials never travel at all (every node reads its own).
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

import pyarrow as pa

from ..config import Config
from ..errors import AuthError, BadRowError, BillingError, ConfigError, JinaBatchError
from ..runtime import jina_endpoint, ray_session
from ..storage import Storage
from .chunking import check_late_chunking
from .coordinator import Coordinator
from .estimate import estimate_run
from .plan import Plan, Shard, plan_corpus
from .progress import make_progress
from .report import EmbedReport
from .report_html import warm_up
from .resume import find_finished
from .runlog import MANIFEST, RunLog
from .task import shard_task
from .worker import ShardResult

__all__ = ["run_embed"]

log = logging.getLogger("jinabatch.embed")
FATAL = (AuthError, BadRowError, BillingError, ConfigError)  # stop the whole run: every shard would fail alike


def _check_settings(config: Config) -> None:
    if config.ray.workers > config.limits.concurrency * len(config.jina.api_key_envs):  # per key of the pool
        raise ConfigError(f"ray.workers ({config.ray.workers}) is more than limits.concurrency "
                          f"({config.limits.concurrency}) × keys ({len(config.jina.api_key_envs)}): every worker "
                          "needs at least one request in flight; lower ray.workers or raise limits.concurrency")
    if config.jina.late_chunking:
        check_late_chunking(config.corpus)


def _check_output(config: Config, out: Storage) -> None:
    manifest = out.read_json(MANIFEST)
    if not manifest or manifest.get("fingerprint") == config.fingerprint():
        return
    had, now = manifest.get("embedding") or {}, config.embedding_key()
    diff = [f"{k} {had.get(k)!r} there, {now.get(k)!r} here" for k in now if k in had and had.get(k) != now.get(k)]
    if had.get("served_by") == "local stand-in" and now.get("served_by") != "local stand-in":
        why = ("its vectors come from the local stand-in (jina.base_url = \"local\"), not from the real model — they "
               "must never be loaded as the model's")
    else:
        why = "; ".join(diff) or "other corpus or shard settings (columns, rows_per_shard, id/text column)"
    raise ConfigError(f"{out.uri}: holds shards made with other settings ({why}; fingerprint "
                      f"{manifest.get('fingerprint')}, this config {config.fingerprint()}); set output.path to a new "
                      "folder (e.g. for a backfill, with output.previous pointing at this one) or delete the old one")


def _runlog_meta(config: Config, plan: Plan, todo: list[Shard], estimate: dict[str, Any] | None) -> dict[str, Any]:
    lim = config.limits
    return {"fingerprint": config.fingerprint(), "embedding": config.embedding_key(),
            "limits": {"rpm": lim.rpm, "tpm": lim.tpm, "concurrency": lim.concurrency},
            "keys": [f"key{i}" for i in range(len(config.jina.api_key_envs))],
            "price_per_million_tokens": config.jina.price_per_million_tokens, "workers": config.ray.workers,
            "plan": {"files": len(plan.files), "shards_total": len(plan.shards), "rows_total": plan.rows,
                     "shards_todo": len(todo), **({"estimate": estimate} if estimate else {})}}


def _new_report(config: Config, plan: Plan, out: Storage) -> EmbedReport:
    j, lim = config.jina, config.limits
    return EmbedReport(shards_total=len(plan.shards), limits={"rpm": lim.rpm, "tpm": lim.tpm,
                       "concurrency": lim.concurrency}, workers=config.ray.workers, model=j.model,
                       task=config.embedding_key()["task"], dimensions=j.dim, embedding_type=j.embedding_type,
                       id_column=config.corpus.id_column, columns=list(config.corpus.columns),
                       fingerprint=config.fingerprint(), output=out.uri, embedding=config.embedding_key())


def run_embed(config: Config, *, progress: bool = True) -> EmbedReport:
    """Run the embed stage; returns the report (also written to ``output.path/_report.json``)."""
    t_start = time.monotonic()
    _check_settings(config)
    out = Storage.open(config.output.path, config.storage)
    out.check("output.path")
    with contextlib.ExitStack() as stack:
        started: list[bool] = []

        def need_ray() -> contextlib.AbstractContextManager:
            if not started:  # one Ray for the duplicate pass and the shard tasks
                stack.enter_context(ray_session(config))
                started.append(True)
            return contextlib.nullcontext()

        plan = plan_corpus(config, out, ray_context=need_ray)
        _check_output(config, out)
        rep = _new_report(config, plan, out)
        if plan.reuse is not None:
            rep.incremental = plan.reuse.to_dict()
        resume = find_finished(config, plan, out, known=RunLog.read_done(out))
        if resume.stale:
            log.info("removing %d stale file(s) of an earlier plan from %s", len(resume.stale), out.uri)
            out.delete_many(resume.stale)
        todo: list[Shard] = []
        skipped: list[dict[str, Any]] = []
        for s in plan.shards:
            meta = resume.done.get(s.index)
            if meta:
                embedded = int(meta.get("rows", meta.get("rows_embedded", 0)))
                dead, truncated = int(meta.get("rows_dead_letter", 0)), int(meta.get("rows_truncated", 0))
                rep.add_rows(s.rows, embedded, dead, meta.get("reasons", {}), truncated)
                rep.rows_reused += int(meta.get("rows_reused", 0))
                rep.shards_skipped += 1
                skipped.append({"shard": s.index, "name": s.name, "rows_in": s.rows, "rows_embedded": embedded,
                                "rows_dead_letter": dead, "rows_truncated": truncated,
                                "reasons": meta.get("reasons", {}), "rows_reused": int(meta.get("rows_reused", 0)),
                                "shard_key": s.key, **rep.add_documents(meta),
                                "fingerprint": config.fingerprint()})
            else:
                todo.append(s)
        estimate = estimate_run(config, plan, out, todo).to_dict() if todo else None
        runlog = RunLog(out, _runlog_meta(config, plan, todo, estimate))
        runlog.start(skipped)
        if not todo:  # everything is done already: no server, no Ray
            rep.duration_s = round(time.monotonic() - t_start, 3)
            rep.finished = True
            rep.write(out)
            runlog.finish(rep.to_dict(), "finished")
            return rep
        with runlog.failing(rep.to_dict):  # a failure to start a service also ends the manifest as "failed"
            if out.abort_multipart_uploads():
                log.info("aborted uploads an earlier run's killed workers left under %s", out.uri)
            base_url, key = stack.enter_context(jina_endpoint(config.jina, config.limits, probe=True))
            need_ray()
            t_first, t_end, fatal = _schedule(config, plan, out, todo, rep, base_url, key, progress, runlog,
                                              rows_before=sum(s["rows_in"] for s in skipped))
    rep.duration_s = round(time.monotonic() - t_start, 3)
    rep.finish_rates((t_end - t_first) if t_first else 0.0, tpm=config.limits.tpm, rpm=config.limits.rpm)
    rep.finished = rep.shards_failed == 0 and fatal is None
    rep.rows_in = plan.rows  # the corpus's rows, also when shards failed
    rep.write(out)
    runlog.finish(rep.to_dict(), "finished" if rep.finished else "failed")
    if fatal is not None:
        raise fatal
    return rep


def _schedule(config: Config, plan: Plan, out: Storage, todo: list[Shard], rep: EmbedReport, base_url: str, key,
              progress: bool | str, runlog: RunLog, rows_before: int) -> tuple[float | None, float, JinaBatchError | None]:
    """Run ``todo`` on Ray, ≤ ray.workers at a time; fold results into ``rep``. (first start, end, fatal error)"""
    import ray

    lim = config.limits
    id_field = pa.field(config.corpus.id_column, plan.id_type)
    carried = [pa.field(c, t) for c, t in plan.column_types.items()]
    coordinator = ray.remote(num_cpus=0)(Coordinator).remote(
        lim.rpm, lim.tpm, lim.concurrency, config.ray.workers, lim.target)
    task = ray.remote(shard_task)
    task_opts = {"num_cpus": config.ray.num_cpus_per_task, "max_retries": config.ray.max_retries,
                 "retry_exceptions": False, "scheduling_strategy": "SPREAD"}  # use every node's network
    key_ref = ray.put(key.get())  # object store only: never in task specs or job metadata
    queue, running = list(reversed(todo)), {}
    bar = make_progress(progress, plan.rows, limits={"rpm": lim.rpm, "tpm": lim.tpm}, rows_before=rows_before)
    t_first, fatal, spent = None, None, None
    warm: threading.Thread | None = None
    try:
        while queue or running:
            while queue and len(running) < config.ray.workers and fatal is None:
                s = queue.pop()
                coordinator.set_remaining.remote(len(queue) + len(running) + 1)
                running[task.options(name=f"embed {s.name}", **task_opts).remote(
                    config, s, out.uri, id_field, carried, base_url, key_ref, coordinator)] = s
                runlog.shard_started(s.index, s.name)
                t_first = t_first or time.monotonic()
            if not running:
                break
            if warm is None and time.monotonic() - t_first > 3:  # _report.html's one-time costs (~1.8 s CPU) once
                # the workers are up and waiting on the API, rather than during their start or after the last shard
                warm = threading.Thread(target=warm_up, name="report-page-warm-up", daemon=True)
                warm.start()
            ready, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
            for ref in ready:
                s = running.pop(ref)
                try:
                    r = ray.get(ref)
                except Exception as e:  # the task crashed past Ray's retries
                    r = vars(ShardResult(s.index, s.name, s.rows, 0, 0, status="failed",
                                         error=f"{type(e).__name__}: {e}", error_type=type(e).__name__))
                fatal = fatal or _collect(rep, s, r)
                runlog.shard_finished({"key": "key0", **r, "shard_key": s.key, "fingerprint": config.fingerprint()})
                coordinator.set_remaining.remote(len(queue) + len(running))
            if fatal is not None and running:
                for ref in running:
                    ray.cancel(ref, force=True)
            t = ray.get(coordinator.totals.remote())
            runlog.tick(t, t["keys"], len(running))
            bar.update(t, shards_done=rep.shards_done + rep.shards_skipped, shards_total=len(plan.shards),
                       workers_active=len(running))
        spent = ray.get(coordinator.totals.remote())
        runlog.tick(spent, spent["keys"], 0)
    finally:
        bar.close()
    t_end = time.monotonic()
    if spent:  # what the key was billed, dead attempts included (results only hold finished ones)
        rep.tokens, rep.requests = max(rep.tokens, spent["tokens"]), max(rep.requests, spent["requests"])
        rep.retries, rep.http_429 = max(rep.retries, spent["retries"]), max(rep.http_429, spent["http_429"])
        rep.add_keys(spent["keys"], probe=key.probe_spend)  # per key (key0...), plus the endpoint check
    if out.abort_multipart_uploads():
        log.info("aborted uploads that killed workers left under %s", out.uri)
    return t_first, t_end, fatal


def _collect(rep: EmbedReport, s: Shard, r: dict[str, Any]) -> JinaBatchError | None:
    """Fold one shard's result into the report; return an error that must stop the run."""
    rep.tokens += r["tokens"]
    rep.raw_tokens += r.get("raw_tokens", 0.0)
    rep.requests += r["requests"]
    rep.retries += r["retries"]
    rep.http_429 += r["http_429"]
    if r["status"] == "done":
        rep.shards_done += 1
        if r.get("node"):
            rep.shards_by_node[r["node"]] = rep.shards_by_node.get(r["node"], 0) + 1
        rep.add_rows(r["rows_in"], r["rows_embedded"], r["rows_dead_letter"], r["reasons"], r["rows_truncated"])
        rep.rows_reused += r.get("rows_reused", 0)
        rep.add_documents(r)
        return None
    rep.shards_failed += 1
    first = s.pieces[0]
    rep.failures.append({"shard": s.name, "file": first.file, "row": first.row_start, "error_type": r["error_type"],
                         "error": r["error"]})
    log.error("%s (%d piece(s) from %s row %d) failed: %s", s.name, len(s.pieces), first.file, first.row_start,
              r["error"])
    by_name = {c.__name__: c for c in FATAL}
    if r["error_type"] in by_name:
        return by_name[r["error_type"]](r["error"])
    return None

"""The embed stage: plan the corpus, run a Ray task per shard, collect a report.

Driver (``run_embed``)::

    plan (all files checked, duplicates found)  → skip shards whose output footer matches the plan
    → start the local Jina server (base_url = "local") / resolve the key
    → Ray: ≤ ray.workers shard tasks in flight, each retried by Ray if its worker process dies
    → progress (bar or log lines) fed by the coordinator actor → RunLog (manifest snapshot, progress and time
      series chunk logs) → _report.json → _report.html

The coordinator actor holds the key's budget. ``remaining`` (shards queued or running) decides how many
workers share it: ``min(workers, remaining)``, so when the last shards run alone they take the freed
share. Each task registers, polls its share every half second while reporting progress, and applies it
to its ``WorkerLimiter``.

The API key reaches workers through the object store (``ray.put``), never through task arguments,
runtime_env or job metadata; it is wrapped in ``Secret`` as soon as it lands in the worker.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from ..config import Config
from ..errors import AuthError, BadRowError, BillingError, ConfigError, JinaBatchError
from ..runtime import jina_endpoint, ray_session
from ..storage import Storage
from .coordinator import Coordinator
from .plan import Plan, Shard, plan_corpus
from .progress import make_progress
from .report import EmbedReport
from .runlog import RunLog
from .shards import read_json, read_shard_meta, shard_path
from .task import shard_task
from .worker import ShardResult, shard_meta

__all__ = ["run_embed"]

log = logging.getLogger("jinabatch.embed")
FATAL = (AuthError, BillingError, BadRowError, ConfigError)  # stop the whole run: every shard would fail alike


def _already_done(config: Config, shard: Shard, out: Path) -> dict[str, Any] | None:
    meta = read_shard_meta(shard_path(out, shard.name))
    want = shard_meta(config, shard)
    if meta and all(meta.get(k) == want[k] for k in ("fingerprint", "source_file", "file_fingerprint",
                                                          "row_start", "row_stop")):
        return meta
    return None


def _check_output(config: Config, out: Path, plan: Plan) -> None:
    manifest = read_json(out / "_manifest.json")
    if manifest and manifest.get("fingerprint") != config.fingerprint():
        raise ConfigError(f"{out}: holds shards made with other settings (fingerprint {manifest.get('fingerprint')}, "
                          f"this config {config.fingerprint()}); set output.path to a new folder (e.g. for a "
                          "backfill) or delete the old one")


# --- bookkeeping (issue 12): RunLog + progress; the lead redoes this wiring in the new driver -------------
def _runlog_meta(config: Config, plan: Plan) -> dict[str, Any]:
    lim = config.limits
    return {"fingerprint": config.fingerprint(), "embedding": config.embedding_key(),
            "limits": {"rpm": lim.rpm, "tpm": lim.tpm, "concurrency": lim.concurrency}, "keys": ["key0"],
            "price_per_million_tokens": config.jina.price_per_million_tokens, "workers": config.ray.workers,
            "plan": {"files": len(plan.files), "shards_total": len(plan.shards), "rows_total": plan.rows}}


def run_embed(config: Config, *, progress: bool = True) -> EmbedReport:
    """Run the embed stage; returns the report (also written to ``output.path/_report.json``)."""
    import ray

    t_start = time.monotonic()
    if config.ray.workers > config.limits.concurrency:
        raise ConfigError(f"ray.workers ({config.ray.workers}) is more than limits.concurrency "
                          f"({config.limits.concurrency}): every worker needs at least one request in flight; "
                          "lower ray.workers or raise limits.concurrency")
    out = Path(config.output.path).resolve()
    if config.jina.late_chunking:
        raise ConfigError("jina.late_chunking = true joins all inputs of a request into one sequence, so the batch "
                          "job would mix unrelated rows; embed each document's chunks with the client "
                          "(JinaClient.embed_batch(chunks, late_chunking=True)) instead, or set it to false")
    plan = plan_corpus(config.corpus, exclude=out)
    _check_output(config, out, plan)
    j, lim = config.jina, config.limits
    rep = EmbedReport(shards_total=len(plan.shards), limits={"rpm": lim.rpm, "tpm": lim.tpm,
                      "concurrency": lim.concurrency}, workers=config.ray.workers, model=j.model,
                      task=config.embedding_key()["task"], dimensions=j.dim, embedding_type=j.embedding_type,
                      id_column=config.corpus.id_column, columns=list(config.corpus.columns),
                      fingerprint=config.fingerprint(), output=str(out))
    states: dict[int, dict[str, Any]] = {}
    todo: list[Shard] = []
    skipped: list[dict[str, Any]] = []
    for s in plan.shards:
        meta = _already_done(config, s, out)
        if meta:
            dead = int(meta.get("rows_dead_letter", 0))
            rep.add_rows(s.rows, int(meta["rows"]), dead, meta.get("reasons", {}), int(meta.get("rows_truncated", 0)))
            rep.shards_skipped += 1
            states[s.index] = {"status": "done", "rows_embedded": meta["rows"], "rows_dead_letter": dead}
            skipped.append({"shard": s.index, "name": s.name, "rows_in": s.rows, "rows_embedded": int(meta["rows"]),
                            "rows_dead_letter": dead})
        else:
            todo.append(s)
    runlog = RunLog(Storage.open(out), _runlog_meta(config, plan))  # issue 12
    runlog.start(skipped)  # issue 12
    if not todo:  # everything is done already: no server, no Ray
        rep.duration_s = round(time.monotonic() - t_start, 3)
        rep.finished = True
        rep.write(out)
        runlog.finish(rep.to_dict(), "finished")  # issue 12
        return rep
    id_field = pa.field(config.corpus.id_column, plan.id_type)
    carried = [pa.field(c, t) for c, t in plan.column_types.items()]

    # issue 12: runlog.failing first, so a failure to start the server or Ray also ends the manifest as "failed"
    with runlog.failing(rep.to_dict), jina_endpoint(config.jina, config.limits) as (base_url, key), \
            ray_session(config):
        coordinator = ray.remote(num_cpus=0)(Coordinator).remote(
            lim.rpm, lim.tpm, lim.concurrency, config.ray.workers, lim.target)
        task = ray.remote(shard_task)
        task_opts = {"num_cpus": config.ray.num_cpus_per_task, "max_retries": config.ray.max_retries,
                     "retry_exceptions": False, "scheduling_strategy": "SPREAD"}  # use every node's network
        key_ref = ray.put(key.get())  # object store only: never in task specs or job metadata
        queue, running = list(reversed(todo)), {}
        bar = make_progress(progress, plan.rows, limits={"rpm": lim.rpm, "tpm": lim.tpm},  # issue 12
                            rows_before=sum(s["rows_in"] for s in skipped))
        t_first, fatal, spent = None, None, None
        try:
            while queue or running:
                while queue and len(running) < config.ray.workers and fatal is None:
                    s = queue.pop()
                    coordinator.set_remaining.remote(len(queue) + len(running) + 1)
                    running[task.options(name=f"embed {s.name}", **task_opts).remote(
                        config, s, str(out), id_field, carried, base_url, key_ref, coordinator)] = s
                    runlog.shard_started(s.index, s.name)  # issue 12
                    t_first = t_first or time.monotonic()
                if not running:
                    break
                ready, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
                for ref in ready:
                    s = running.pop(ref)
                    try:
                        r = ray.get(ref)
                    except Exception as e:  # the task crashed past Ray's retries
                        r = vars(ShardResult(s.index, s.name, s.rows, 0, 0, status="failed",
                                             error=f"{type(e).__name__}: {e}", error_type=type(e).__name__))
                    fatal = fatal or _collect(rep, s, r, states)
                    runlog.shard_finished({**r, "key": "key0"})  # issue 12
                    coordinator.set_remaining.remote(len(queue) + len(running))
                if fatal is not None and running:
                    for ref in running:
                        ray.cancel(ref, force=True)
                t = ray.get(coordinator.totals.remote())
                runlog.tick(t, {"key0": t}, len(running))  # issue 12
                bar.update(t, shards_done=rep.shards_done + rep.shards_skipped, shards_total=len(plan.shards),
                           workers_active=len(running))
            spent = ray.get(coordinator.totals.remote())
            runlog.tick(spent, {"key0": spent}, 0)  # issue 12
        finally:
            bar.close()
        t_end = time.monotonic()
        if spent:  # what the key was billed, dead attempts included (results only hold finished ones)
            rep.tokens, rep.requests = max(rep.tokens, spent["tokens"]), max(rep.requests, spent["requests"])
            rep.retries, rep.http_429 = max(rep.retries, spent["retries"]), max(rep.http_429, spent["http_429"])
    rep.duration_s = round(time.monotonic() - t_start, 3)
    rep.finish_rates((t_end - t_first) if t_first else 0.0, tpm=lim.tpm, rpm=lim.rpm)
    rep.finished = rep.shards_failed == 0 and fatal is None
    rep.write(out)
    runlog.finish(rep.to_dict(), "finished" if rep.finished else "failed")  # issue 12
    if fatal is not None:
        raise fatal
    return rep


def _collect(rep: EmbedReport, s: Shard, r: dict[str, Any], states: dict[int, dict[str, Any]]) -> JinaBatchError | None:
    """Fold one shard's result into the report; return an error that must stop the run."""
    rep.tokens += r["tokens"]
    rep.requests += r["requests"]
    rep.retries += r["retries"]
    rep.http_429 += r["http_429"]
    if r["status"] == "done":
        rep.shards_done += 1
        if r.get("node"):
            rep.shards_by_node[r["node"]] = rep.shards_by_node.get(r["node"], 0) + 1
        rep.add_rows(r["rows_in"], r["rows_embedded"], r["rows_dead_letter"], r["reasons"], r["rows_truncated"])
        states[s.index] = {"status": "done", "rows_embedded": r["rows_embedded"],
                           "rows_dead_letter": r["rows_dead_letter"], "tokens": r["tokens"]}
        return None
    rep.shards_failed += 1
    rep.failures.append({"shard": s.name, "file": s.file, "error_type": r["error_type"], "error": r["error"]})
    states[s.index] = {"status": "failed", "error": r["error"]}
    log.error("%s (%s rows %d-%d) failed: %s", s.name, s.file, s.row_start, s.row_stop, r["error"])
    by_name = {c.__name__: c for c in FATAL}
    if r["error_type"] in by_name:
        return by_name[r["error_type"]](r["error"])
    return None

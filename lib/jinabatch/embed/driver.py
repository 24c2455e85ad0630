"""The embed stage's driver: plan, skip what is finished, run a Ray task per shard, book the results.

``run_embed``::

    output reachable? → plan (embed.plan: corpus listed and checked, duplicates found — or the stored plan of
    the same corpus reused) → settings match the output folder? → finished shards found with one listing
    (embed.resume), stale ones deleted → local Jina server (base_url = "local") / the key
    → Ray: ≤ ray.workers shard tasks in flight (embed.task), each retried by Ray if its worker process dies
    → progress fed by the coordinator actor → a small manifest snapshot every few seconds → _report.json

Ray is started only when needed: for the distributed duplicate pass of a big corpus, or to embed; a rerun
with nothing left to do starts no service at all. Finishing a shard costs the driver O(1): a counter update
and, every few seconds, one small file — never a rewrite of a per-shard list.

The API key reaches workers through the object store (``ray.put``), never through task arguments,
runtime_env or job metadata; object-store credentials never travel at all (every node reads its own).
"""
from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import pyarrow as pa

from ..config import Config
from ..errors import AuthError, BadRowError, BillingError, ConfigError, JinaBatchError
from ..runtime import jina_endpoint, ray_session
from ..storage import Storage
from .coordinator import Coordinator
from .plan import Plan, Shard, plan_corpus
from .report import EmbedReport
from .resume import find_finished
from .task import shard_task
from .worker import ShardResult

__all__ = ["run_embed", "MANIFEST"]

log = logging.getLogger("jinabatch.embed")
FATAL = (AuthError, BadRowError, BillingError, ConfigError)  # stop the whole run: every shard would fail alike
MANIFEST = "_manifest.json"
MANIFEST_SECONDS = 5.0


def _check_settings(config: Config) -> None:
    if config.ray.workers > config.limits.concurrency:
        raise ConfigError(f"ray.workers ({config.ray.workers}) is more than limits.concurrency "
                          f"({config.limits.concurrency}): every worker needs at least one request in flight; "
                          "lower ray.workers or raise limits.concurrency")
    if config.jina.late_chunking:
        raise ConfigError("jina.late_chunking = true joins all inputs of a request into one sequence, so the batch "
                          "job would mix unrelated rows; embed each document's chunks with the client "
                          "(JinaClient.embed_batch(chunks, late_chunking=True)) instead, or set it to false")


def _check_output(config: Config, out: Storage) -> None:
    manifest = out.read_json(MANIFEST)
    if manifest and manifest.get("fingerprint") != config.fingerprint():
        raise ConfigError(f"{out.uri}: holds shards made with other settings (fingerprint {manifest.get('fingerprint')}, "
                          f"this config {config.fingerprint()}); set output.path to a new folder (e.g. for a "
                          "backfill) or delete the old one")


def _manifest(config: Config, plan: Plan, rep: EmbedReport, state: str, running: int = 0) -> dict[str, Any]:
    done = rep.shards_done + rep.shards_skipped
    return {"fingerprint": config.fingerprint(), "embedding": config.embedding_key(), "state": state,
            "updated_at": time.time(), "corpus": plan.root, "files": len(plan.files), "rows": plan.rows,
            "shards": {"total": len(plan.shards), "done": done, "skipped": rep.shards_skipped,
                       "failed": rep.shards_failed, "running": running,
                       "pending": len(plan.shards) - done - rep.shards_failed - running},
            "rows_embedded": rep.rows_embedded, "rows_dead_letter": rep.rows_dead_letter, "tokens": rep.tokens}


def _new_report(config: Config, plan: Plan, out: Storage) -> EmbedReport:
    j, lim = config.jina, config.limits
    return EmbedReport(shards_total=len(plan.shards), limits={"rpm": lim.rpm, "tpm": lim.tpm,
                       "concurrency": lim.concurrency}, workers=config.ray.workers, model=j.model,
                       task=config.embedding_key()["task"], dimensions=j.dim, embedding_type=j.embedding_type,
                       id_column=config.corpus.id_column, columns=list(config.corpus.columns),
                       fingerprint=config.fingerprint(), output=out.uri)


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
        resume = find_finished(config, plan, out)
        if resume.stale:
            log.info("removing %d stale file(s) of an earlier plan from %s", len(resume.stale), out.uri)
            out.delete_many(resume.stale)
        todo: list[Shard] = []
        for s in plan.shards:
            meta = resume.done.get(s.index)
            if meta:
                rep.add_rows(s.rows, int(meta["rows"]), int(meta.get("rows_dead_letter", 0)), meta.get("reasons", {}),
                             int(meta.get("rows_truncated", 0)))
                rep.shards_skipped += 1
            else:
                todo.append(s)
        out.write_json(MANIFEST, _manifest(config, plan, rep, "running" if todo else "finished"))
        if not todo:  # everything is done already: no server, no Ray
            rep.duration_s = round(time.monotonic() - t_start, 3)
            rep.finished = True
            rep.write(out)
            return rep
        if out.abort_multipart_uploads():
            log.info("aborted uploads an earlier run's killed workers left under %s", out.uri)
        base_url, key = stack.enter_context(jina_endpoint(config.jina, config.limits))
        need_ray()
        t_first, t_end, fatal = _schedule(config, plan, out, todo, rep, base_url, key, progress)
    rep.duration_s = round(time.monotonic() - t_start, 3)
    rep.finish_rates((t_end - t_first) if t_first else 0.0, tpm=config.limits.tpm, rpm=config.limits.rpm)
    rep.finished = rep.shards_failed == 0 and fatal is None
    rep.write(out)
    out.write_json(MANIFEST, _manifest(config, plan, rep, "finished" if rep.finished else "failed"))
    if fatal is not None:
        raise fatal
    return rep


def _schedule(config: Config, plan: Plan, out: Storage, todo: list[Shard], rep: EmbedReport, base_url: str, key,
              progress: bool) -> tuple[float | None, float, JinaBatchError | None]:
    """Run ``todo`` on Ray, ≤ ray.workers at a time; fold results into ``rep``. (first start, end, fatal error)"""
    import ray
    from tqdm import tqdm

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
    bar = tqdm(total=sum(s.rows for s in todo), unit="rows", disable=not progress, smoothing=0.1,
               dynamic_ncols=True, desc="embed")
    t_first, fatal, spent, t_manifest = None, None, None, time.monotonic()
    try:
        while queue or running:
            while queue and len(running) < config.ray.workers and fatal is None:
                s = queue.pop()
                coordinator.set_remaining.remote(len(queue) + len(running) + 1)
                running[task.options(name=f"embed {s.name}", **task_opts).remote(
                    config, s, out.uri, id_field, carried, base_url, key_ref, coordinator)] = s
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
                fatal = fatal or _collect(rep, s, r)
                coordinator.set_remaining.remote(len(queue) + len(running))
            if fatal is not None and running:
                for ref in running:
                    ray.cancel(ref, force=True)
            t = ray.get(coordinator.totals.remote())
            bar.n = t["rows"]
            el = max(1e-9, time.monotonic() - (t_first or time.monotonic()))
            bar.set_postfix(tok_s=f"{t['tokens'] / el:.0f}", req=t["requests"], r429=t["http_429"], refresh=False)
            bar.refresh()
            if time.monotonic() - t_manifest >= MANIFEST_SECONDS:
                out.write_json(MANIFEST, _manifest(config, plan, rep, "running", len(running)))
                t_manifest = time.monotonic()
        spent = ray.get(coordinator.totals.remote())
    finally:
        bar.close()
    t_end = time.monotonic()
    if spent:  # what the key was billed, dead attempts included (results only hold finished ones)
        rep.tokens, rep.requests = max(rep.tokens, spent["tokens"]), max(rep.requests, spent["requests"])
        rep.retries, rep.http_429 = max(rep.retries, spent["retries"]), max(rep.http_429, spent["http_429"])
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

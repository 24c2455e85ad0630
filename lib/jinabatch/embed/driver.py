"""The embed stage: plan the corpus, run a Ray task per shard, collect a report.

Driver (``run_embed``)::

    plan (all files checked, duplicates found)  → skip shards whose output footer matches the plan
    → start the local Jina server (base_url = "local") / resolve the key
    → Ray: ≤ ray.workers shard tasks in flight, each retried by Ray if its worker process dies
    → progress bar fed by the coordinator actor → manifest after every shard → _report.json

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
from .coordinator import Coordinator
from .plan import Plan, Shard, plan_corpus
from .report import EmbedReport
from .shards import read_json, read_shard_meta, shard_path, write_json_atomic
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


def _manifest(config: Config, plan: Plan, states: dict[int, dict[str, Any]]) -> dict[str, Any]:
    return {"fingerprint": config.fingerprint(), "embedding": config.embedding_key(),
            "shards": [{"shard": s.index, "name": s.name, "file": s.file, "rg": [s.rg_start, s.rg_stop],
                        "rows": [s.row_start, s.row_stop], **states.get(s.index, {"status": "pending"})}
                       for s in plan.shards]}


def run_embed(config: Config, *, progress: bool = True) -> EmbedReport:
    """Run the embed stage; returns the report (also written to ``output.path/_report.json``)."""
    import ray
    from tqdm import tqdm

    t_start = time.monotonic()
    if config.ray.workers > config.limits.concurrency * len(config.jina.api_key_envs):  # per key of the pool
        raise ConfigError(f"ray.workers ({config.ray.workers}) is more than limits.concurrency "
                          f"({config.limits.concurrency}) × keys ({len(config.jina.api_key_envs)}): every worker "
                          "needs at least one request in flight; lower ray.workers or raise limits.concurrency")
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
    for s in plan.shards:
        meta = _already_done(config, s, out)
        if meta:
            dead = int(meta.get("rows_dead_letter", 0))
            rep.add_rows(s.rows, int(meta["rows"]), dead, meta.get("reasons", {}), int(meta.get("rows_truncated", 0)))
            rep.shards_skipped += 1
            states[s.index] = {"status": "done", "rows_embedded": meta["rows"], "rows_dead_letter": dead}
        else:
            todo.append(s)
    write_json_atomic(out / "_manifest.json", _manifest(config, plan, states))
    if not todo:  # everything is done already: no server, no Ray
        rep.duration_s = round(time.monotonic() - t_start, 3)
        rep.finished = True
        rep.write(out)
        return rep
    id_field = pa.field(config.corpus.id_column, plan.id_type)
    carried = [pa.field(c, t) for c, t in plan.column_types.items()]

    with jina_endpoint(config.jina, config.limits, probe=True) as (base_url, key), ray_session(config):
        coordinator = ray.remote(num_cpus=0)(Coordinator).remote(
            lim.rpm, lim.tpm, lim.concurrency, config.ray.workers, lim.target)
        task = ray.remote(shard_task)
        task_opts = {"num_cpus": config.ray.num_cpus_per_task, "max_retries": config.ray.max_retries,
                     "retry_exceptions": False, "scheduling_strategy": "SPREAD"}  # use every node's network
        key_ref = ray.put(key.get())  # object store only: never in task specs or job metadata
        queue, running = list(reversed(todo)), {}
        bar = tqdm(total=sum(s.rows for s in todo), unit="rows", disable=not progress, smoothing=0.1,
                   dynamic_ncols=True, desc="embed")
        t_first, fatal, spent = None, None, None
        try:
            while queue or running:
                while queue and len(running) < config.ray.workers and fatal is None:
                    s = queue.pop()
                    coordinator.set_remaining.remote(len(queue) + len(running) + 1)
                    running[task.options(name=f"embed {s.name}", **task_opts).remote(
                        config, s, str(out), id_field, carried, base_url, key_ref, coordinator)] = s
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
                    write_json_atomic(out / "_manifest.json", _manifest(config, plan, states))
                    coordinator.set_remaining.remote(len(queue) + len(running))
                if fatal is not None and running:
                    for ref in running:
                        ray.cancel(ref, force=True)
                t = ray.get(coordinator.totals.remote())
                bar.n = t["rows"]
                el = max(1e-9, time.monotonic() - (t_first or time.monotonic()))
                bar.set_postfix(tok_s=f"{t['tokens'] / el:.0f}", req=t["requests"], r429=t["http_429"], refresh=False)
                bar.refresh()
            spent = ray.get(coordinator.totals.remote())
        finally:
            bar.close()
        t_end = time.monotonic()
        if spent:  # what the key was billed, dead attempts included (results only hold finished ones)
            rep.tokens, rep.requests = max(rep.tokens, spent["tokens"]), max(rep.requests, spent["requests"])
            rep.retries, rep.http_429 = max(rep.retries, spent["retries"]), max(rep.http_429, spent["http_429"])
            rep.add_keys(spent["keys"], probe=key.probe_spend)  # per key (key0...), plus the endpoint check
    rep.duration_s = round(time.monotonic() - t_start, 3)
    rep.finish_rates((t_end - t_first) if t_first else 0.0, tpm=lim.tpm, rpm=lim.rpm)
    rep.finished = rep.shards_failed == 0 and fatal is None
    rep.rows_in = sum(s.rows for s in plan.shards)  # the corpus's rows, also when shards failed
    rep.write(out)
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

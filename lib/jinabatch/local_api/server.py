"""A local Jina-compatible embeddings server, for tests, benchmarks and ``make run``.

It speaks the wire protocol of ``https://api.jina.ai/v1/embeddings`` (fields, errors, usage,
the four embedding types) with vectors from ``jinabatch.local_api.fakemodel``, and adds what a test of a
batch client needs: per-key RPM / TPM / concurrency limits answering 429 + ``Retry-After``,
latency, reproducible fault injection, and ``/stats`` counters. See ``server_app`` for the
request pipeline, ``server_validate`` for the validation rules and ``server_limits`` for the
token buckets.

``LocalServer`` runs it either in a background thread with its own event loop (cheap; tests) or,
with ``mode="process"``, as ``jinabatch.local_api.server.main`` in a subprocess so it does not share a
GIL with the client under measurement (benchmarks). Either way it is driven over HTTP:
``stats()``, ``reset_stats()``, ``configure(**changes)``. Keys reach a subprocess through the
``JINAAI_API_KEY`` environment variable, never its command line; nothing prints or returns them.

Endpoints: ``POST /v1/embeddings``, ``GET /stats`` (``by_key``: per key, named ``key0``… by sorted
position), ``GET /stats/trace``, ``POST /stats/reset``, ``POST /admin/config``
(JSON object of settings to merge), ``GET /healthz``. The POST admin endpoints need a valid key.

Jina's Batch Embeddings API (``local_api.batch``): ``POST /v1/batch/embeddings`` (202 + ``batch_id``), ``GET
/v1/batch/{id}`` (submitted → processing → completed | failed | cancelled; tokens billed at the first status query
after completion), ``GET /v1/batch/{id}/output`` (shuffled JSONL, ``custom_id`` ``request-N``, exact float32
vectors), ``GET /v1/batch/{id}/errors``, ``DELETE /v1/batch/{id}``; a batch is visible to the key that submitted it
only; ``POST /admin/batch/forget`` (``forget_batches()``) drops every batch. Its settings and fault knobs are the
``batch_*`` fields of ``ServerSettings`` (``batch.BatchKnobs``), the ``--batch-...`` flags and
``configure(batch_...=...)`` keys: timing ``batch_queue_s`` (0.2), ``batch_processing_s`` (0.5),
``batch_processing_per_1000_s`` (0.2); ``batch_max_inputs`` (10000), ``batch_max_in_flight`` (4 per key, then 429),
``batch_shuffle`` (true), ``batch_polls_spend_rpm`` (false); faults ``batch_fail_first``, ``batch_fail_marker``,
``batch_item_fail_marker``, ``batch_unknown_custom_id``, ``batch_drop_first`` + ``batch_drop_after_bytes``,
``batch_expire_s``, ``batch_balance_after`` (402), ``batch_auth_fail_after`` (401). ``/stats`` has a ``batch``
section of counters.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import selectors
import signal
import subprocess
import sys
import threading

import httpx
from aiohttp import web

from .app import BATCH_KNOBS, DEFAULT_KEY, FAULT_KINDS, TRANSIENT_FAULTS, ServerSettings, make_app

__all__ = ["LocalServer", "ServerSettings", "FAULT_KINDS", "TRANSIENT_FAULTS", "DEFAULT_KEY", "main", "KEY_ENV"]

KEY_ENV = "JINAAI_API_KEY"  # one key, or several separated by commas
_START_TIMEOUT = 30.0
_CHILD = "import sys; from jinabatch.local_api.server import main; sys.exit(main())"  # not -m: no runpy double import


async def _start_site(settings: ServerSettings) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(make_app(settings), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    return runner, runner.addresses[0][1]


class LocalServer:
    """The local server; ``with LocalServer(ServerSettings(rpm=60)) as srv: srv.url ...``."""

    def __init__(self, settings: ServerSettings | None = None, *, mode: str = "thread", **overrides):
        if mode not in ("thread", "process"):
            raise ValueError(f"mode must be 'thread' or 'process'; got {mode!r}")
        settings = settings or ServerSettings()
        self.settings = dataclasses.replace(settings, **overrides) if overrides else settings
        self.mode = mode
        self.port: int | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._proc: subprocess.Popen | None = None
        self._http: httpx.Client | None = None

    def __repr__(self) -> str:  # never shows the keys
        return f"LocalServer(url={self.url if self.port else None!r}, mode={self.mode!r})"

    @classmethod
    def spawn(cls, settings: ServerSettings | None = None, **overrides) -> "LocalServer":
        """Start a server in a subprocess (own GIL) and return it, started."""
        return cls(settings, mode="process", **overrides).start()

    # -- addresses -----------------------------------------------------------------------------
    @property
    def base(self) -> str:
        if self.port is None:
            raise RuntimeError("the server is not started; call start() first")
        return f"http://{self.settings.host}:{self.port}"

    @property
    def url(self) -> str:
        """The API base URL, e.g. http://127.0.0.1:PORT/v1 (POST {url}/embeddings)."""
        return self.base + "/v1"

    @property
    def key(self) -> str:
        """One accepted key (the smallest, so the choice is stable)."""
        return min(self.settings.api_keys)

    # -- life cycle ----------------------------------------------------------------------------
    def start(self) -> "LocalServer":
        if self.port is not None:
            return self
        if self.mode == "thread":
            self._start_thread()
        else:
            self._start_process()
        self._http = httpx.Client(base_url=self.base, timeout=30.0,
                                  headers={"Authorization": f"Bearer {self.key}"})
        return self

    def _start_thread(self) -> None:
        ready, box = threading.Event(), {}

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                runner, box["port"] = loop.run_until_complete(_start_site(self.settings))
            except BaseException as e:  # reported by start()
                box["error"] = e
                ready.set()
                loop.close()
                return
            self._loop = loop
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(runner.cleanup())
                loop.run_until_complete(loop.shutdown_default_executor())
                loop.close()

        self._thread = threading.Thread(target=run, name="jina-local-server", daemon=True)
        self._thread.start()
        if not ready.wait(_START_TIMEOUT) or "error" in box:
            raise RuntimeError(f"local Jina server could not listen on {self.settings.host}:{self.settings.port}: "
                               f"{box.get('error', 'timed out')}")
        self.port = box["port"]

    def _start_process(self) -> None:
        s = self.settings
        args = [sys.executable, "-c", _CHILD, "--host", s.host, "--port", str(s.port),
                *_cli_args(s)]
        env = dict(os.environ, **{KEY_ENV: ",".join(sorted(s.api_keys))})
        self._proc = subprocess.Popen(args, stdout=subprocess.PIPE, env=env, text=True)
        sel = selectors.DefaultSelector()
        sel.register(self._proc.stdout, selectors.EVENT_READ)
        line = ""
        if sel.select(_START_TIMEOUT):
            line = self._proc.stdout.readline().strip()
        sel.close()
        if not line.startswith("http://"):
            self._kill()
            raise RuntimeError(f"local Jina server subprocess did not start (first line: {line!r}); "
                               "run `python jobs/serve.py` by hand to see its error")
        self.port = int(line.rsplit(":", 1)[1].split("/", 1)[0])

    def stop(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)
            self._loop = self._thread = None
        if self._proc is not None:
            self._kill()
        self.port = None

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout:
            proc.stdout.close()

    def __enter__(self) -> "LocalServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- control over HTTP ---------------------------------------------------------------------
    def _client(self) -> httpx.Client:
        if self._http is None:
            raise RuntimeError("the server is not started; call start() first")
        return self._http

    def stats(self) -> dict:
        """The /stats counters (requests, ok, by_status, http_429, tokens, peak_concurrency, ...)."""
        return self._client().get("/stats").raise_for_status().json()

    def trace(self) -> list[list]:
        """Every limits decision since the last reset: [unix time, key index, tokens, admitted 1/0]."""
        return self._client().get("/stats/trace").raise_for_status().json()

    def reset_stats(self) -> dict:
        return self._client().post("/stats/reset").raise_for_status().json()

    def forget_batches(self) -> int:
        """Drop every batch of the batch API (their ids answer 404 from now on); returns how many."""
        return self._client().post("/admin/batch/forget").raise_for_status().json()["forgotten"]

    def configure(self, **changes) -> dict:
        """Change limits / latency / faults at run time; returns the new settings (without keys)."""
        r = self._client().post("/admin/config", json=changes)
        if r.status_code != 200:
            raise ValueError(r.json().get("detail", r.text))
        self.settings = self.settings.replace(**changes)
        return r.json()


def _cli_args(s: ServerSettings) -> list[str]:
    """Command-line flags reproducing the settings (except host, port and keys)."""
    out = ["--burst-seconds", str(s.burst_seconds), "--latency-ms", str(s.latency_ms),
           "--latency-per-token-ms", str(s.latency_per_token_ms), "--fault-rate", str(s.fault_rate),
           "--faults", ",".join(s.faults), "--stall-seconds", str(s.stall_seconds), "--seed", str(s.seed),
           "--tokenizer", s.tokenizer, "--token-scale", str(s.token_scale), "--bucket-start", str(s.bucket_start),
           "--arrival-jitter-ms", str(s.arrival_jitter_ms)]
    for flag, v in (("--rpm", s.rpm), ("--tpm", s.tpm), ("--concurrency", s.concurrency),
                    ("--fault-every", s.fault_every)):
        if v is not None:
            out += [flag, str(v)]
    if not s.retry_after:
        out.append("--no-retry-after")
    for m in s.public()["extra_models"]:
        out += ["--extra-model", json.dumps(m)]
    for f in dataclasses.fields(ServerSettings):
        v = getattr(s, f.name)
        if f.name in BATCH_KNOBS and v != f.default:
            flag = "--" + f.name.replace("_", "-")
            out += ([flag] if v is True else [f"--no-{flag[2:]}"]) if isinstance(v, bool) else [flag, str(v)]
    return out


def _add_batch_flags(p: argparse.ArgumentParser) -> None:
    """--batch-... flags, one per ``batch.BatchKnobs`` field (its default and help)."""
    g = p.add_argument_group("batch embeddings API (local_api.batch)")
    for f in dataclasses.fields(ServerSettings):
        if f.name not in BATCH_KNOBS:
            continue
        flag, kind = "--" + f.name.replace("_", "-"), f.type
        help_ = f"{f.metadata.get('help', '')} (default {'off' if f.default is None else f.default})"
        if kind == "bool":
            g.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_)
        else:
            conv = str if kind.startswith("str") else int if kind.startswith("int") else float
            g.add_argument(flag, type=conv, default=f.default, help=help_)


def _parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Local Jina-compatible embeddings server. "
                                f"Keys: --key (repeatable) and/or ${KEY_ENV} (comma-separated); "
                                f"default {DEFAULT_KEY!r}. Prints the API base URL, runs until SIGINT/SIGTERM.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 = a free port (default)")
    p.add_argument("--key", action="append", default=[], help="an accepted API key (repeatable)")
    p.add_argument("--rpm", type=int, help="requests per minute per key (default unlimited)")
    p.add_argument("--tpm", type=int, help="tokens per minute per key (default unlimited)")
    p.add_argument("--concurrency", type=int, help="requests in flight per key (default unlimited)")
    p.add_argument("--burst-seconds", type=float, default=60.0, help="bucket capacity in seconds of budget")
    p.add_argument("--no-retry-after", dest="retry_after", action="store_false", help="omit Retry-After on 429")
    p.add_argument("--latency-ms", type=float, default=0.0)
    p.add_argument("--latency-per-token-ms", type=float, default=0.0)
    p.add_argument("--fault-rate", type=float, default=0.0, help="probability a request faults (0..1)")
    p.add_argument("--fault-every", type=int, help="fault every Nth admitted request instead")
    p.add_argument("--faults", default=",".join(TRANSIENT_FAULTS), help=f"kinds, comma-separated: {','.join(FAULT_KINDS)}")
    p.add_argument("--stall-seconds", type=float, default=30.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer", default="fake", help="how tokens are counted: fake (default) or words (about "
                   "one per word, one more per 7 characters of a long word, one per mark and per CJK character)")
    p.add_argument("--token-scale", type=float, default=1.0, help="every token count times this (1.1 = 10%% more)")
    p.add_argument("--bucket-start", type=float, default=1.0, help="how full each key's buckets start (0..1)")
    p.add_argument("--arrival-jitter-ms", type=float, default=0.0,
                   help="delay each request by a random 0..N ms before the limits see it")
    p.add_argument("--extra-model", action="append", default=[], type=json.loads, metavar="JSON",
                   help="also serve a model the job's table does not know, e.g. '{\"name\": \"jina-embeddings-v6\", "
                        "\"dim\": 1024, \"tasks\": [\"retrieval.query\", \"retrieval.passage\"]}' (repeatable; "
                        "keys: name, dim, dims, tasks, max_inputs, max_tokens, fields)")
    _add_batch_flags(p)
    return p


def settings_from_args(argv: list[str] | None = None, prog: str | None = None) -> ServerSettings:
    """The settings the command line asks for (``prog``: the name its usage line shows)."""
    a = _parser(prog).parse_args(argv)
    keys = set(a.key) | {k.strip() for k in os.environ.get(KEY_ENV, "").split(",") if k.strip()}
    try:
        return ServerSettings(
            host=a.host, port=a.port, api_keys=frozenset(keys or {DEFAULT_KEY}), rpm=a.rpm, tpm=a.tpm,
            concurrency=a.concurrency, burst_seconds=a.burst_seconds, retry_after=a.retry_after,
            latency_ms=a.latency_ms, latency_per_token_ms=a.latency_per_token_ms, fault_rate=a.fault_rate,
            fault_every=a.fault_every, faults=tuple(k for k in a.faults.split(",") if k),
            stall_seconds=a.stall_seconds, seed=a.seed, tokenizer=a.tokenizer, token_scale=a.token_scale,
            bucket_start=a.bucket_start, arrival_jitter_ms=a.arrival_jitter_ms, extra_models=tuple(a.extra_model),
            **{name: getattr(a, name) for name in BATCH_KNOBS})
    except ValueError as e:
        _parser(prog).error(str(e))
        raise


async def _serve(settings: ServerSettings) -> None:
    runner, port = await _start_site(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"http://{settings.host}:{port}/v1", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """CLI entry point (``jinabatch serve``, ``jobs/serve.py`` and ``python -m jinabatch.local_api.server``)."""
    settings = settings_from_args(argv, prog)
    try:
        asyncio.run(_serve(settings))
    except OSError as e:
        print(f"serve: cannot listen on {settings.host}:{settings.port}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

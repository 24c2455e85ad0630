"""The aiohttp application of the local Jina-compatible server: settings, state, handlers.

One ``State`` per app holds the settings, a ``KeyLimiter`` per API key, the fault RNG and the
counters. A ``POST /v1/embeddings`` goes: auth (401) → parse + validate (400/422, see
``server_validate``) → limits (429 + Retry-After, nothing consumed) → fault draw → latency
(``asyncio.sleep``, so concurrent requests really overlap) → embed in a worker thread → response.
Faults happen after admission, so a faulted request has spent its budget as on a real server.

Disagreeing with the client, on purpose (a real API does): ``tokenizer`` / ``token_scale`` count tokens by
another rule than the fake model's default (``fakemodel.TOKENIZERS``; usage, limits and truncation all
follow it), ``bucket_start`` is how full the buckets are when a key is first seen (1 = full, like an idle
key), and ``arrival_jitter_ms`` delays each request by a random 0..N ms before the limits see it (network
jitter: requests sent in order arrive bunched or reordered).

Counters: ``/stats`` totals, and ``by_key`` per API key labelled by position in the sorted key list
(``key0``, ``key1``…; never the key). ``GET /stats/trace`` lists every limits decision as ``[unix time,
key index, tokens, admitted (1) or refused (0)]`` since the last reset (at most ``TRACE_CAP`` entries), so a
benchmark can measure utilization between the first and last admission instead of between responses.

Fault kinds: ``json500``, ``html502``, ``drop`` (connection closed with no response), ``stall``
(sleep ``stall_seconds`` then answer normally), and for client tests ``wrong_count``,
``wrong_dims``, ``nan``, ``shuffle``. With ``fault_every = N`` every Nth admitted request
faults, cycling through ``faults`` in order; otherwise each admitted request faults with
probability ``fault_rate`` and a kind drawn from a ``random.Random(seed)`` (reproducible).

Models: every model of the job's table, and ``extra_models`` — models the table does not know, served under their
own names with the figures given (``local_api.catalog``), so a test can show the job running a model it has never
heard of.

Batch Embeddings API: ``local_api.batch`` registers its routes here and keeps its batches in ``State.batches``;
its settings are the ``batch_*`` fields ``ServerSettings`` takes from ``batch.BatchKnobs``, and its counters are
``/stats`` ``batch`` (not in the top-level request counters).

The API key is compared, never stored in stats, logs or error details.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import random
import time
from dataclasses import dataclass, field

import numpy as np
from aiohttp import web

from ..jina.wire import STAND_IN_HEADER
from . import batch, fakemodel
from .batch import BATCH_KNOBS, BatchKnobs, BatchStore
from .catalog import ServedModel, catalog, extra_model
from .limits import KeyLimiter
from .validate import EmbeddingRequest, HTTPProblem, parse_request

__all__ = ["ServerSettings", "FAULT_KINDS", "TRANSIENT_FAULTS", "DEFAULT_KEY", "make_app", "State", "STATE",
           "BATCH_KNOBS", "STAND_IN_HEADER"]

FAULT_KINDS = ("json500", "html502", "drop", "stall", "wrong_count", "wrong_dims", "nan", "shuffle")
TRANSIENT_FAULTS = ("json500", "html502", "drop")
DEFAULT_KEY = "jina_local_server_key"  # well-known key of a local server started without one
TRACE_CAP = 500_000
_TUNABLE = ("rpm", "tpm", "concurrency", "burst_seconds", "retry_after", "latency_ms", "latency_per_token_ms",
            "fault_rate", "fault_every", "faults", "stall_seconds", "seed", "record_inputs", "tokenizer",
            "token_scale", "bucket_start", "arrival_jitter_ms", *BATCH_KNOBS)
_LIMITS = {"rpm", "tpm", "concurrency", "burst_seconds", "bucket_start"}  # a change gives every key new buckets


@dataclass
class ServerSettings(BatchKnobs):  # the batch_* fields: local_api.batch
    host: str = "127.0.0.1"
    port: int = 0  # 0 = a free port
    api_keys: frozenset[str] = field(default_factory=lambda: frozenset({DEFAULT_KEY}), repr=False)
    rpm: int | None = None  # per key; None = unlimited
    tpm: int | None = None
    concurrency: int | None = None
    burst_seconds: float = 60.0
    retry_after: bool = True  # send Retry-After on 429
    latency_ms: float = 0.0
    latency_per_token_ms: float = 0.0
    fault_rate: float = 0.0
    fault_every: int | None = None
    faults: tuple[str, ...] = TRANSIENT_FAULTS
    stall_seconds: float = 30.0
    seed: int = 0
    record_inputs: int = 0  # keep the inputs of the last N successful requests in /stats ("inputs_log"); tests
    tokenizer: str = "fake"  # how the server counts tokens (fakemodel.TOKENIZERS), whatever the client estimates
    token_scale: float = 1.0  # every count times this (rounded up): 1.1 = the server counts 10% more
    bucket_start: float = 1.0  # how full a key's buckets are when first seen (1 = full: an idle key)
    arrival_jitter_ms: float = 0.0  # each request waits a random 0..N ms before the limits see it
    # models the job's table does not know, served too: {"name", "dim", ...} each (local_api.catalog)
    extra_models: tuple[ServedModel, ...] = ()

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm", "concurrency", "fault_every"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name}: expected a whole number >= 1, or null for unlimited; got {v!r}")
        for name in ("burst_seconds", "latency_ms", "latency_per_token_ms", "fault_rate", "stall_seconds",
                     "bucket_start", "arrival_jitter_ms"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"{name}: expected a number >= 0; got {v!r}")
        if self.burst_seconds <= 0:
            raise ValueError(f"burst_seconds: must be > 0; got {self.burst_seconds}")
        if isinstance(self.api_keys, str):
            self.api_keys = frozenset({self.api_keys})
        self.api_keys = frozenset(self.api_keys)
        self.faults = tuple(self.faults)
        bad = [k for k in self.faults if k not in FAULT_KINDS]
        if bad:
            raise ValueError(f"faults: unknown kind(s) {bad}; known: {list(FAULT_KINDS)}")
        if not self.api_keys:
            raise ValueError("api_keys: at least one key is needed")
        if not 0 <= self.fault_rate <= 1:
            raise ValueError(f"fault_rate: must be between 0 and 1; got {self.fault_rate}")
        if not self.bucket_start <= 1:
            raise ValueError(f"bucket_start: a fraction of the bucket, 0 to 1; got {self.bucket_start}")
        self.extra_models = tuple(extra_model(m) for m in self.extra_models)
        catalog(self.extra_models)  # raises ValueError naming a model the table knows already
        fakemodel.tokenizer(self.tokenizer, self.token_scale)  # raises ValueError naming the setting
        self.check_batch()

    def public(self) -> dict:
        """The settings without the keys (what /stats shows)."""
        d = dataclasses.asdict(self)
        d.pop("api_keys")
        d["faults"] = list(self.faults)
        d["extra_models"] = [{**m, "dims": m["dims"] and list(m["dims"]), "tasks": list(m["tasks"]),
                              "fields": sorted(m["fields"])} for m in d["extra_models"]]
        return d

    def replace(self, **changes) -> "ServerSettings":
        unknown = sorted(set(changes) - set(_TUNABLE))
        if unknown:
            raise ValueError(f"cannot change {unknown} at run time; tunable: {list(_TUNABLE)}")
        return dataclasses.replace(self, **changes)


STATE: web.AppKey = web.AppKey("state", object)


def _new_stats() -> dict:
    return {"requests": 0, "ok": 0, "by_status": {}, "http_429": 0, "http_5xx": 0, "faults": 0,
            "faults_by_kind": {}, "dropped": 0, "tokens": 0, "inputs": 0, "in_flight": 0,
            "peak_concurrency": 0, "first_ok_at": None, "last_ok_at": None, "inputs_log": [], "by_key": {},
            "arrival_delay_s": 0.0, "batch": batch.new_counters()}


def _new_key_stats() -> dict:
    return {"requests": 0, "ok": 0, "http_429": 0, "tokens": 0, "peak_concurrency": 0}


class State:
    def __init__(self, settings: ServerSettings):
        self.settings = settings
        self.stats = _new_stats()
        self.limiters: dict[str, KeyLimiter] = {}
        self.trace: list[tuple[float, int, int, int]] = []
        self.tokenizer = fakemodel.tokenizer(settings.tokenizer, settings.token_scale)
        self.models = catalog(settings.extra_models)
        self.jitter = random.Random(settings.seed + 1)
        self.batches = BatchStore()
        self._reset_faults()

    def key_label(self, key: str) -> tuple[int, str]:
        """(index, "keyN"): the key's position in the sorted key list — a name that never reveals it."""
        i = sorted(self.settings.api_keys).index(key)
        return i, f"key{i}"

    def key_stats(self, key: str) -> dict:
        label = self.key_label(key)[1]
        st = self.stats["by_key"].get(label)
        if st is None:
            st = self.stats["by_key"][label] = _new_key_stats()
        return st

    def record(self, key: str, tokens: int, admitted: bool) -> None:
        if len(self.trace) < TRACE_CAP:
            self.trace.append((time.time(), self.key_label(key)[0], tokens, int(admitted)))

    def _reset_faults(self) -> None:
        self.rng = random.Random(self.settings.seed)
        self.seq = 0

    def configure(self, **changes) -> None:
        old = self.settings
        self.settings = old.replace(**changes)
        self.tokenizer = fakemodel.tokenizer(self.settings.tokenizer, self.settings.token_scale)
        if _LIMITS & set(changes):
            for key, lim in list(self.limiters.items()):
                self.limiters[key] = self._limiter(lim.in_flight)
        if {"fault_rate", "fault_every", "faults", "seed"} & set(changes):
            self._reset_faults()
        self.batches.reconfigured(changes)

    def _limiter(self, in_flight: int = 0) -> KeyLimiter:
        s = self.settings
        return KeyLimiter(s.rpm, s.tpm, s.concurrency, s.burst_seconds, in_flight, s.bucket_start)

    def limiter(self, key: str) -> KeyLimiter:
        lim = self.limiters.get(key)
        if lim is None:
            lim = self.limiters[key] = self._limiter()
        return lim

    def key_of(self, request: web.Request) -> str:
        auth = request.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HTTPProblem(401, "missing API key: send the header Authorization: Bearer <your key>")
        token = token.strip()
        for k in self.settings.api_keys:
            if hmac.compare_digest(token.encode(), k.encode()):
                return k
        raise HTTPProblem(401, "invalid API key: check the key you configured (the value is not shown here)")

    def draw_fault(self) -> str | None:
        s = self.settings
        if not s.faults:
            return None
        self.seq += 1
        if s.fault_every:
            if self.seq % s.fault_every == 0:
                return s.faults[(self.seq // s.fault_every - 1) % len(s.faults)]
            return None
        if s.fault_rate and self.rng.random() < s.fault_rate:
            return self.rng.choice(s.faults)
        return None

    def public_stats(self) -> dict:
        st = dict(self.stats, by_status={str(k): v for k, v in self.stats["by_status"].items()})
        s = self.settings
        st["limits"] = {"rpm": s.rpm, "tpm": s.tpm, "concurrency": s.concurrency, "burst_seconds": s.burst_seconds}
        st["settings"] = s.public()
        st["batch"] = self.batches.public(self.stats["batch"], lambda k: self.key_label(k)[1], time.monotonic())
        return st

    def count(self, status: int) -> None:
        st = self.stats
        st["by_status"][status] = st["by_status"].get(status, 0) + 1
        st["http_429"] += status == 429
        st["http_5xx"] += status >= 500


def _problem(status: int, detail: str, headers: dict | None = None) -> web.Response:
    return web.json_response({"detail": detail}, status=status, headers=headers)


def _respond(state: State, req: EmbeddingRequest, fault: str | None) -> web.Response:
    vecs = fakemodel.embed(req.spec.name, req.task, req.dimensions, req.texts,
                           late_chunking=req.late_chunking, normalized=req.normalized)
    order = list(range(len(vecs)))
    if fault == "wrong_count":
        order = order[:-1]
    elif fault == "wrong_dims":
        vecs = vecs[:, : max(1, req.dimensions // 2)]
    elif fault == "nan":
        vecs = vecs.copy()
        vecs[0, 0] = np.nan
    elif fault == "shuffle":
        random.Random(state.seq).shuffle(order)
    values = fakemodel.encode(vecs, req.embedding_type)
    data = [{"object": "embedding", "index": i, "embedding": values[i]} for i in order]
    usage = {"total_tokens": req.total_tokens, "prompt_tokens": req.total_tokens}
    body = {"model": req.spec.name, "object": "list", "usage": usage, "data": data}
    if state.settings.record_inputs and fault is None:
        log = state.stats["inputs_log"]
        log.append({"input": list(req.texts), "late_chunking": req.late_chunking})
        del log[: max(0, len(log) - state.settings.record_inputs)]
    # the stand-in says what it is, so vectors it made are never taken for the real model's
    return web.Response(text=json.dumps(body), content_type="application/json",
                        headers={STAND_IN_HEADER: "jinabatch local stand-in"})


async def embeddings(request: web.Request) -> web.StreamResponse:
    state: State = request.app[STATE]
    st = state.stats
    st["requests"] += 1
    try:
        key = state.key_of(request)
        try:
            body = await request.json(loads=json.loads)
        except ValueError as e:
            raise HTTPProblem(422, f"request body is not valid JSON: {e}") from None
        req = parse_request(body, state.tokenizer, state.models)
    except HTTPProblem as p:
        state.count(p.status)
        return _problem(p.status, p.detail)

    if state.settings.arrival_jitter_ms:  # the network between client and limits: arrivals bunch and reorder
        delay = state.jitter.uniform(0, state.settings.arrival_jitter_ms) / 1000
        st["arrival_delay_s"] += delay
        await asyncio.sleep(delay)
    limiter = state.limiter(key)
    ks = state.key_stats(key)
    ks["requests"] += 1
    refusal = limiter.admit(req.total_tokens)
    state.record(key, req.total_tokens, refusal is None)
    if refusal is not None:
        state.count(429)
        ks["http_429"] += 1
        headers = {"Retry-After": str(refusal.retry_after)} if state.settings.retry_after else None
        return _problem(429, refusal.reason + "; slow down and retry later", headers)
    st["in_flight"] += 1
    st["peak_concurrency"] = max(st["peak_concurrency"], st["in_flight"])
    ks["peak_concurrency"] = max(ks["peak_concurrency"], limiter.in_flight)
    try:
        resp = await _admitted(state, request, req)
        if resp.status == 200:
            ks["ok"] += 1
            ks["tokens"] += req.total_tokens
        return resp
    finally:
        st["in_flight"] -= 1
        state.limiter(key).release()


async def _admitted(state: State, request: web.Request, req: EmbeddingRequest) -> web.StreamResponse:
    s, st = state.settings, state.stats
    fault = state.draw_fault()
    if fault:
        st["faults"] += 1
        st["faults_by_kind"][fault] = st["faults_by_kind"].get(fault, 0) + 1
    delay = (s.latency_ms + s.latency_per_token_ms * req.total_tokens) / 1000.0
    if fault == "stall":
        delay += s.stall_seconds
    if delay > 0:
        await asyncio.sleep(delay)
    if fault == "json500":
        state.count(500)
        return _problem(500, "internal server error (injected fault); retry the request")
    if fault == "html502":
        state.count(502)
        return web.Response(status=502, content_type="text/html",
                            text="<html><head><title>502 Bad Gateway</title></head><body><center>"
                                 "<h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>")
    if fault == "drop":
        st["dropped"] += 1
        if request.transport is not None:
            request.transport.abort()
        raise asyncio.CancelledError()
    resp = await asyncio.get_running_loop().run_in_executor(None, _respond, state, req, fault)
    now = time.time()
    state.count(200)
    st["ok"] += 1
    st["tokens"] += req.total_tokens
    st["inputs"] += len(req.texts)
    st["first_ok_at"] = st["first_ok_at"] or now
    st["last_ok_at"] = now
    return resp


async def stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].public_stats())


async def reset_stats(request: web.Request) -> web.Response:
    state: State = request.app[STATE]
    try:
        state.key_of(request)
    except HTTPProblem as p:
        return _problem(p.status, p.detail)
    in_flight = state.stats["in_flight"]
    state.stats = _new_stats()
    state.stats["in_flight"] = in_flight
    state.trace = []
    return web.json_response(state.public_stats())


async def trace(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].trace)


async def admin_config(request: web.Request) -> web.Response:
    state: State = request.app[STATE]
    try:
        state.key_of(request)
        try:
            changes = await request.json()
        except ValueError as e:
            raise HTTPProblem(422, f"request body is not valid JSON: {e}") from None
        if not isinstance(changes, dict):
            raise HTTPProblem(422, "request body must be a JSON object of settings to change")
        try:
            state.configure(**changes)
        except (TypeError, ValueError) as e:
            raise HTTPProblem(422, str(e)) from None
    except HTTPProblem as p:
        return _problem(p.status, p.detail)
    return web.json_response(state.settings.public())


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def make_app(settings: ServerSettings) -> web.Application:
    app = web.Application(client_max_size=256 * 1024 * 1024)
    app[STATE] = State(settings)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/stats", stats)
    app.router.add_post("/stats/reset", reset_stats)
    app.router.add_get("/stats/trace", trace)
    app.router.add_post("/admin/config", admin_config)
    app.router.add_get("/healthz", healthz)
    batch.add_routes(app, STATE)
    return app

"""Jina's Batch Embeddings API on the local stand-in: submit, status, output, errors, cancel.

Endpoints (Bearer key as for ``/v1/embeddings``; a batch belongs to the key that submitted it — any other key
gets 404, never someone else's vectors):

* ``POST /v1/batch/embeddings`` ``{model, input: [str, ...], task?, dimensions?, normalized?}`` → ``202 {"batch_id":
  "batch_<hex>", "status": "submitted", "created_at": <unix s>}``. Only the models the table marks ``batch_api`` (v5
  text small / nano); a field the batch body does not have (``embedding_type``, ``truncate``, ``late_chunking``,
  ``input_file``) or an unknown one is a 422 naming it (``validate.parse_batch_request``). A submit is one request
  against the key's RPM (429 + ``Retry-After``), not against its TPM (with ``batch_polls_spend_rpm`` every other
  batch request spends one too). More than ``batch_max_in_flight`` batches submitted or processing for the key → 429
  naming "batches in flight". 401 for a bad key, 402 once the balance is empty (``batch_balance_after``).
* ``GET /v1/batch/{id}`` → ``{batch_id, status, created_at, completed_at?, stats {total, completed, failed,
  total_tokens}, output_url?, error?}``. ``submitted`` for ``batch_queue_s``, then ``processing`` for
  ``batch_processing_s + batch_processing_per_1000_s * n / 1000`` (stats grow with it), then ``completed`` or
  ``failed``. The batch's tokens are billed (``/stats`` ``batch.billed_tokens``) at the first status query after
  completion, once; failed and cancelled batches are not billed.
* ``GET /v1/batch/{id}/output`` → 409 until completed, then JSONL (chunked, streamed in blocks of
  ``OUTPUT_BLOCK`` rows), one line per input: ``{"custom_id": "request-N", "response": {"status_code": 200,
  "body": {"object": "list", "data": [{"object": "embedding", "embedding": [...], "index": 0}], "model": ...,
  "usage": {"total_tokens": t, "prompt_tokens": t}}}}`` with N the input's 0-based position, lines shuffled
  (``batch_shuffle``). Floats are the shortest decimals of the float32 values (orjson), so parsing them to
  float32 is exact, and each vector is ``fakemodel.embed`` of that text — what ``/v1/embeddings`` answers. An
  item the model cannot embed — empty, longer than the model's context (no truncate in a batch), or containing
  ``batch_item_fail_marker`` — is ``{"status_code": 400, "body": {"detail": "<reason>"}}``.
* ``GET /v1/batch/{id}/errors`` → 409 until completed, then the JSONL lines of the failed items only.
* ``DELETE /v1/batch/{id}`` → ``200 {"batch_id", "status": "cancelled"}`` while submitted or processing; 409
  once terminal.
* ``POST /admin/batch/forget`` (any valid key; ``LocalServer.forget_batches()``) drops every batch: their ids answer
  404 from then on, as from a service that no longer knows them.

Fault knobs (``BatchKnobs``; ``ServerSettings`` fields, ``configure(...)`` keys and ``--batch-...`` flags):
``batch_fail_first=N`` (the next N batches submitted end ``failed``), ``batch_fail_marker`` (a batch with an input
containing it ends ``failed``), ``batch_item_fail_marker``, ``batch_unknown_custom_id`` (the output carries one
extra line, ``request-<total>``, for an input never submitted), ``batch_drop_first=N`` with
``batch_drop_after_bytes`` (the next N output downloads break the connection after that many bytes),
``batch_expire_s`` (output and errors answer 410 Gone that long after completion), ``batch_balance_after=N``
(the submits after the next N answer 402), ``batch_auth_fail_after=N`` (batch requests after the next N answer
401). Setting a counted knob with ``configure`` starts its count again. A batch keeps the timing, shuffle and
fault decisions in force when it was submitted (``batch_expire_s`` and ``batch_drop_*`` act at download time).

``/stats`` ``batch``: submitted, status_polls, downloads, dropped, cancelled, completed, failed, billed_tokens,
in_flight (now), rejected_in_flight, rejected_rpm, by_status, and ``by_key`` (``key0``…: submitted, status_polls,
billed_tokens, in_flight). Everything runs on the server's event loop; embedding and JSON encoding of an output
block run in a worker thread.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import random
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import orjson
from aiohttp import web

from ..jina.wire import STAND_IN_HEADER
from . import fakemodel
from .validate import BatchRequest, HTTPProblem, parse_batch_request

__all__ = ["BatchKnobs", "BATCH_KNOBS", "BatchStore", "Batch", "new_counters", "add_routes", "OUTPUT_BLOCK",
           "STATUSES"]

OUTPUT_BLOCK = 256  # rows embedded and encoded per write of an output download
STATUSES = ("submitted", "processing", "completed", "failed", "cancelled")
_TERMINAL = ("completed", "failed", "cancelled")
_UNKNOWN_TEXT = "a line for an input that was never submitted"


@dataclass(kw_only=True)
class BatchKnobs:
    """The batch settings of the stand-in (mixed into ``ServerSettings``)."""

    batch_queue_s: float = field(default=0.2, metadata={"help": "seconds a batch stays submitted"})
    batch_processing_s: float = field(default=0.5, metadata={"help": "seconds a batch is processing (plus the next)"})
    batch_processing_per_1000_s: float = field(default=0.2, metadata={
        "help": "more processing seconds per 1,000 inputs"})
    batch_max_inputs: int = field(default=10_000, metadata={"help": "inputs one batch may hold"})
    batch_max_in_flight: int | None = field(default=4, metadata={
        "help": "batches submitted or processing per key (more: 429)"})
    batch_shuffle: bool = field(default=True, metadata={"help": "output lines in shuffled order"})
    batch_polls_spend_rpm: bool = field(default=False, metadata={
        "help": "status polls, downloads and cancels also spend the key's RPM (a submit always does)"})
    batch_fail_first: int = field(default=0, metadata={"help": "the next N batches end failed"})
    batch_fail_marker: str | None = field(default=None, metadata={
        "help": "a batch with an input containing this text ends failed"})
    batch_item_fail_marker: str | None = field(default=None, metadata={
        "help": "an input containing this text fails (status_code 400)"})
    batch_unknown_custom_id: bool = field(default=False, metadata={
        "help": "the output carries a line for a custom_id never submitted"})
    batch_drop_first: int = field(default=0, metadata={"help": "the next N output downloads break the connection"})
    batch_drop_after_bytes: int = field(default=1000, metadata={
        "help": "bytes a broken download sends before it breaks"})
    batch_expire_s: float | None = field(default=None, metadata={
        "help": "output and errors answer 410 this long after completion"})
    batch_balance_after: int | None = field(default=None, metadata={
        "help": "the submits after the next N answer 402 (empty balance)"})
    batch_auth_fail_after: int | None = field(default=None, metadata={
        "help": "batch requests after the next N answer 401"})

    def check_batch(self) -> None:
        """ValueError naming a batch setting out of range."""
        for f in dataclasses.fields(BatchKnobs):
            v, kind = getattr(self, f.name), f.type
            if v is None and "None" in kind:
                continue
            if kind.startswith("bool"):
                if not isinstance(v, bool):
                    raise ValueError(f"{f.name}: expected true or false; got {v!r}")
            elif kind.startswith("str"):
                if not isinstance(v, str) or not v:
                    raise ValueError(f"{f.name}: expected a non-empty text, or null for none; got {v!r}")
            elif isinstance(v, bool) or not isinstance(v, int if kind.startswith("int") else (int, float)) or v < 0:
                what = "a whole number" if kind.startswith("int") else "a number"
                raise ValueError(f"{f.name}: expected {what} >= 0{', or null for none' if 'None' in kind else ''}; "
                                 f"got {v!r}")
        for name in ("batch_max_inputs", "batch_max_in_flight", "batch_drop_after_bytes"):
            if getattr(self, name) == 0:
                raise ValueError(f"{name}: must be >= 1; got 0")


BATCH_KNOBS = tuple(f.name for f in dataclasses.fields(BatchKnobs))
_COUNTED = {"batch_fail_first": "fail", "batch_drop_first": "drop", "batch_balance_after": "balance",
            "batch_auth_fail_after": "auth"}


def new_counters() -> dict:
    return {"submitted": 0, "status_polls": 0, "downloads": 0, "dropped": 0, "cancelled": 0, "completed": 0,
            "failed": 0, "billed_tokens": 0, "in_flight": 0, "rejected_in_flight": 0, "rejected_rpm": 0,
            "by_status": {}, "by_key": {}}


@dataclass
class Batch:
    id: str
    key: str = field(repr=False)
    req: BatchRequest = field(repr=False)
    created_at: float  # unix seconds
    start: float  # monotonic
    queue_s: float
    processing_s: float
    failures: dict[int, str]  # input index → why it could not be embedded
    error: str | None  # the batch as a whole fails with this
    shuffle: bool
    unknown_line: bool
    cancelled: bool = False
    billed: bool = False
    ended: bool = False  # counted as completed / failed

    @property
    def total(self) -> int:
        return len(self.req.texts)

    @property
    def ok_tokens(self) -> int:
        return sum(n for i, n in enumerate(self.req.tokens) if i not in self.failures)

    def status(self, now: float) -> str:
        if self.cancelled:
            return "cancelled"
        t = now - self.start
        if t < self.queue_s:
            return "submitted"
        if t < self.queue_s + self.processing_s:
            return "processing"
        return "failed" if self.error else "completed"

    def ends_in(self, now: float) -> float:
        return max(0.0, self.start + self.queue_s + self.processing_s - now)

    def view(self, now: float) -> dict:
        status = self.status(now)
        out = {"batch_id": self.id, "status": status, "created_at": int(self.created_at)}
        bad = len(self.failures)
        if status in ("completed", "failed"):
            out["completed_at"] = int(self.created_at + self.queue_s + self.processing_s)
        if status == "failed":
            done, failed, tokens = 0, self.total, 0
            out["error"] = self.error
        elif status == "completed":
            done, failed, tokens = self.total - bad, bad, self.ok_tokens
            out["output_url"] = f"/v1/batch/{self.id}/output"
        elif status == "processing":
            frac = (now - self.start - self.queue_s) / max(self.processing_s, 1e-9)
            done, failed = math.floor(frac * (self.total - bad)), math.floor(frac * bad)
            tokens = math.floor(frac * self.ok_tokens)
        else:
            done = failed = tokens = 0
        out["stats"] = {"total": self.total, "completed": done, "failed": failed, "total_tokens": tokens}
        return out

    def order(self, seed: int) -> list[int]:
        order = list(range(self.total))
        if self.shuffle:
            random.Random(f"{seed}:{self.id}").shuffle(order)
        return order


def _item_failures(req: BatchRequest, marker: str | None) -> dict[int, str]:
    out, spec = {}, req.spec
    for i, (text, n) in enumerate(zip(req.texts, req.tokens)):
        if not text:
            out[i] = f"input[{i}]: empty string; there is nothing to embed"
        elif n > spec.max_tokens:
            out[i] = (f"input[{i}]: {n} tokens, over {spec.name}'s limit of {spec.max_tokens}; the batch API has no "
                      "truncate: shorten the input before submitting")
        elif marker and marker in text:
            out[i] = f"input[{i}]: the model could not embed this input (injected: it contains batch_item_fail_marker)"
    return out


class BatchStore:
    """Every batch of the server, with the counts behind the counted fault knobs."""

    def __init__(self) -> None:
        self.batches: dict[str, Batch] = {}
        self.used = {"fail": 0, "drop": 0, "balance": 0, "auth": 0}

    def forget(self) -> int:
        """Drop every batch; how many there were."""
        n = len(self.batches)
        self.batches.clear()
        return n

    def reconfigured(self, changes) -> None:
        for name in set(changes) & set(_COUNTED):
            self.used[_COUNTED[name]] = 0

    def in_flight(self, key: str | None, now: float) -> list[Batch]:
        return [b for b in self.batches.values() if (key is None or b.key == key)
                and b.status(now) in ("submitted", "processing")]

    def create(self, key: str, req: BatchRequest, s: BatchKnobs) -> Batch:
        error = None
        if self.used["fail"] < s.batch_fail_first:
            self.used["fail"] += 1
            error = "the batch failed while processing (injected: batch_fail_first)"
        elif s.batch_fail_marker and any(s.batch_fail_marker in t for t in req.texts):
            error = "the batch failed while processing (injected: an input contains batch_fail_marker)"
        b = Batch("batch_" + secrets.token_hex(12), key, req, time.time(), time.monotonic(), s.batch_queue_s,
                  s.batch_processing_s + s.batch_processing_per_1000_s * len(req.texts) / 1000,
                  _item_failures(req, s.batch_item_fail_marker), error, s.batch_shuffle, s.batch_unknown_custom_id)
        self.batches[b.id] = b
        return b

    def get(self, key: str, batch_id: str) -> Batch:
        b = self.batches.get(batch_id)
        if b is None or b.key != key:
            raise HTTPProblem(404, f"batch {batch_id!r} not found for this API key")
        return b

    def sweep(self, counters: dict, now: float) -> None:
        """Count the batches that have ended since the last sweep."""
        for b in self.batches.values():
            if not b.ended and b.status(now) in ("completed", "failed"):
                b.ended = True
                counters[b.status(now)] += 1

    def public(self, counters: dict, label: Callable[[str], str], now: float) -> dict:
        self.sweep(counters, now)
        out = {**counters, "by_status": {str(k): v for k, v in counters["by_status"].items()},
               "by_key": {k: dict(v) for k, v in counters["by_key"].items()}}
        out["in_flight"] = len(self.in_flight(None, now))
        for b in self.in_flight(None, now):
            ks = out["by_key"].setdefault(label(b.key), _key_counters())
            ks["in_flight"] += 1
        return out


def _key_counters() -> dict:
    return {"submitted": 0, "status_polls": 0, "billed_tokens": 0, "in_flight": 0}


# -- output lines ----------------------------------------------------------------------------------------------
def _ok_line(i: int, vec: np.ndarray, model: str, tokens: int) -> bytes:
    body = {"object": "list", "data": [{"object": "embedding", "embedding": vec, "index": 0}], "model": model,
            "usage": {"total_tokens": tokens, "prompt_tokens": tokens}}
    return orjson.dumps({"custom_id": f"request-{i}", "response": {"status_code": 200, "body": body}},
                        option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"


def _error_line(i: int, reason: str) -> bytes:
    return orjson.dumps({"custom_id": f"request-{i}",
                         "response": {"status_code": 400, "body": {"detail": reason}}}) + b"\n"


def _encode_block(b: Batch, rows: list[int]) -> bytes:
    """The JSONL lines of these inputs, in this order (run in a worker thread)."""
    req = b.req
    ok = [i for i in rows if i not in b.failures]
    vecs = fakemodel.embed(req.spec.name, req.task, req.dimensions, [req.texts[i] for i in ok],
                           normalized=req.normalized)
    by_row = dict(zip(ok, vecs))
    return b"".join(_ok_line(i, by_row[i], req.spec.name, req.tokens[i]) if i in by_row
                    else _error_line(i, b.failures[i]) for i in rows)


def _unknown_line(b: Batch) -> bytes:
    req = b.req
    vec = fakemodel.embed(req.spec.name, req.task, req.dimensions, [_UNKNOWN_TEXT], normalized=req.normalized)[0]
    return _ok_line(b.total, vec, req.spec.name, fakemodel.count_tokens(_UNKNOWN_TEXT))


def _blocks(b: Batch, seed: int) -> Iterator[list[int] | None]:
    """Rows of each output block in output order; None where the unknown custom_id line goes."""
    order = b.order(seed)
    half = len(order) // 2
    for start in range(0, len(order), OUTPUT_BLOCK):
        rows = order[start:start + OUTPUT_BLOCK]
        if b.unknown_line and start <= half < start + OUTPUT_BLOCK:
            yield rows[:half - start]
            yield None
            yield rows[half - start:]
        else:
            yield rows


# -- handlers ----------------------------------------------------------------------------------------------------
def add_routes(app: web.Application, state_key: web.AppKey) -> None:
    """Register the batch endpoints; the app's state (``app.State``) is ``app[state_key]``."""
    h = _Handlers(state_key)
    app.router.add_post("/v1/batch/embeddings", h.wrap(h.submit, submit=True))
    app.router.add_get("/v1/batch/{id}", h.wrap(h.status))
    app.router.add_delete("/v1/batch/{id}", h.wrap(h.cancel))
    app.router.add_get("/v1/batch/{id}/output", h.wrap(h.output))
    app.router.add_get("/v1/batch/{id}/errors", h.wrap(h.errors))
    app.router.add_post("/admin/batch/forget", h.forget)


def _problem(status: int, detail: str, headers: dict | None = None) -> web.Response:
    return web.json_response({"detail": detail}, status=status, headers=headers)


class _Handlers:
    def __init__(self, state_key: web.AppKey):
        self.state_key = state_key

    def wrap(self, handler, submit: bool = False):
        async def run(request: web.Request) -> web.StreamResponse:
            state = request.app[self.state_key]
            counters = state.stats["batch"]
            try:
                key = self._auth(state, request)
                if not submit and state.settings.batch_polls_spend_rpm:
                    self._spend_rpm(state, key)
                state.batches.sweep(counters, time.monotonic())
                resp = await handler(state, key, request)
            except HTTPProblem as p:
                resp = _problem(p.status, p.detail, p.headers)
            counters["by_status"][resp.status] = counters["by_status"].get(resp.status, 0) + 1
            return resp
        return run

    async def forget(self, request: web.Request) -> web.Response:
        """Drop every batch (any valid key may ask): the service no longer knows their ids."""
        state = request.app[self.state_key]
        try:
            state.key_of(request)
        except HTTPProblem as p:
            return _problem(p.status, p.detail)
        return web.json_response({"forgotten": state.batches.forget()})

    @staticmethod
    def _auth(state, request: web.Request) -> str:
        key = state.key_of(request)
        limit, store = state.settings.batch_auth_fail_after, state.batches
        if limit is not None:
            if store.used["auth"] >= limit:
                raise HTTPProblem(401, "invalid API key: the key was revoked (injected: batch_auth_fail_after)")
            store.used["auth"] += 1
        return key

    @staticmethod
    def _spend_rpm(state, key: str) -> None:
        """One request of the key's RPM, or 429 + Retry-After (nothing spent)."""
        refusal = state.limiter(key).admit_request()
        if refusal is not None:
            state.stats["batch"]["rejected_rpm"] += 1
            headers = {"Retry-After": str(refusal.retry_after)} if state.settings.retry_after else None
            raise HTTPProblem(429, refusal.reason + "; slow down and retry later", headers)

    @staticmethod
    def _key_counters(state, key: str) -> dict:
        return state.stats["batch"]["by_key"].setdefault(state.key_label(key)[1], _key_counters())

    async def submit(self, state, key: str, request: web.Request) -> web.Response:
        s, store, counters = state.settings, state.batches, state.stats["batch"]
        try:
            body = await request.json(loads=json.loads)
        except ValueError as e:
            raise HTTPProblem(422, f"request body is not valid JSON: {e}") from None
        req = parse_batch_request(body, state.tokenizer, s.batch_max_inputs, state.models)
        if s.batch_balance_after is not None and store.used["balance"] >= s.batch_balance_after:
            raise HTTPProblem(402, "insufficient balance: this API key has no tokens left; top it up to submit "
                                   "batches (injected: batch_balance_after)")
        now = time.monotonic()
        flying = store.in_flight(key, now)
        if s.batch_max_in_flight is not None and len(flying) >= s.batch_max_in_flight:
            counters["rejected_in_flight"] += 1
            wait = max(1, math.ceil(min(b.ends_in(now) for b in flying)))
            raise HTTPProblem(429, f"too many batches in flight: {len(flying)} of at most {s.batch_max_in_flight} "
                                   "batches in flight for this key are submitted or processing; wait for one to "
                                   "finish", {"Retry-After": str(wait)})
        self._spend_rpm(state, key)
        if s.batch_balance_after is not None:
            store.used["balance"] += 1
        b = store.create(key, req, s)
        counters["submitted"] += 1
        self._key_counters(state, key)["submitted"] += 1
        return web.json_response({"batch_id": b.id, "status": "submitted", "created_at": int(b.created_at)},
                                 status=202)

    async def status(self, state, key: str, request: web.Request) -> web.Response:
        b = state.batches.get(key, request.match_info["id"])
        counters, ks = state.stats["batch"], self._key_counters(state, key)
        counters["status_polls"] += 1
        ks["status_polls"] += 1
        view = b.view(time.monotonic())
        if view["status"] == "completed" and not b.billed:
            b.billed = True
            counters["billed_tokens"] += b.ok_tokens
            ks["billed_tokens"] += b.ok_tokens
        return web.json_response(view)

    async def cancel(self, state, key: str, request: web.Request) -> web.Response:
        b = state.batches.get(key, request.match_info["id"])
        status = b.status(time.monotonic())
        if status in _TERMINAL:
            raise HTTPProblem(409, f"batch {b.id} is already {status}; only a submitted or processing batch can be "
                                   "cancelled")
        b.cancelled = True
        state.stats["batch"]["cancelled"] += 1
        return web.json_response({"batch_id": b.id, "status": "cancelled"})

    @staticmethod
    def _finished(state, key: str, request: web.Request, what: str) -> Batch:
        b = state.batches.get(key, request.match_info["id"])
        now = time.monotonic()
        status = b.status(now)
        if status != "completed":
            why = "it is not finished yet; poll GET /v1/batch/{id}" if status not in _TERMINAL \
                else f"it ended {status}, so there is none"
            raise HTTPProblem(409, f"batch {b.id} is {status}: no {what} ({why})")
        expire = state.settings.batch_expire_s
        if expire is not None and now > b.start + b.queue_s + b.processing_s + expire:
            raise HTTPProblem(410, f"batch {b.id}: its {what} has expired ({expire:g} s after completion; "
                                   "injected: batch_expire_s); submit the inputs again")
        return b

    async def output(self, state, key: str, request: web.Request) -> web.StreamResponse:
        b = self._finished(state, key, request, "output")
        counters, store, s = state.stats["batch"], state.batches, state.settings
        counters["downloads"] += 1
        cut = None
        if store.used["drop"] < s.batch_drop_first:
            store.used["drop"] += 1
            cut = s.batch_drop_after_bytes
        resp = await _start_stream(request)
        loop, sent = asyncio.get_running_loop(), 0
        for rows in _blocks(b, s.seed):
            chunk = _unknown_line(b) if rows is None else await loop.run_in_executor(None, _encode_block, b, rows)
            if cut is not None and sent + len(chunk) >= cut:
                await resp.write(chunk[:cut - sent])
                counters["dropped"] += 1
                if request.transport is not None:
                    request.transport.abort()
                raise asyncio.CancelledError()
            await resp.write(chunk)
            sent += len(chunk)
        await resp.write_eof()
        return resp

    async def errors(self, state, key: str, request: web.Request) -> web.StreamResponse:
        b = self._finished(state, key, request, "errors file")
        resp = await _start_stream(request)
        for i in sorted(b.failures):
            await resp.write(_error_line(i, b.failures[i]))
        await resp.write_eof()
        return resp


async def _start_stream(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(status=200, headers={"Content-Type": "application/jsonl",
                                                   STAND_IN_HEADER: "jinabatch local stand-in"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    return resp


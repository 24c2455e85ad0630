"""The async client of Jina's Batch Embeddings API: submit, status, wait, output, errors, cancel.

* **Submit** (``POST /v1/batch/embeddings``) is a request like an embeddings call: every attempt passes the same
  :class:`~jinabatch.jina.limits.Limiter` (in a shard task, the coordinator's grants — one request of RPM, no
  tokens: the API bills a batch's tokens at completion) and is retried by **stamina** like
  ``JinaClient.embed_batch``: 429 after its ``Retry-After`` within ``jina.retry_timeout``, faults up to
  ``jina.max_attempts``. A permit naming a key of the pool decides the key; the batch belongs to that key, so its
  index comes back with the id and every later call on that batch uses it.
* **Status, output, errors, cancel** spend no RPM budget and take no limiter slot, on a connection pool of their
  own: a long download or a poll never holds a connection or a slot a submit waits for. They are retried on
  transient faults the same way.
* **Wait** polls with a growing, jittered interval (``jina.batch.poll_initial`` ×1.5 per query up to
  ``poll_max``, each wait stretched at random by up to ``poll_jitter``) until the batch is terminal or
  ``jina.batch.timeout`` seconds of waiting have passed (a rerun waits on the same batch again).
* **Output** is streamed line by line (never the whole ~100 MB of JSON floats of a 10,000 × 1024 batch in
  memory), each line matched to its input by ``custom_id`` (``request-N``: N the input's position in the submitted
  list) — never by arrival order — into a preallocated float32 array. Lines for an id never submitted are
  counted and named, not dropped silently. A download that breaks (connection dropped, a cut line) is retried from
  scratch: nothing of a partial download is kept.

404 / 410 on a batch the job submitted raise :class:`~jinabatch.errors.BatchGone` (the caller submits again).
The API key is handled as in ``jinabatch.jina.client``: ``BearerAuth`` hooks only, never in messages.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import orjson
import stamina

from ..config import JinaSettings
from ..errors import BatchGone, JinaError, RateLimited, ResponseError, RetriesExhausted, TransientError, TransportError
from .client import BearerAuth, ClientStats, backoff, http_timeout, scrub_bytes
from .keys import KeyPool, Secret
from .limits import Limiter, NoLimiter
from .wire import build_body, error_for_status, short_text

__all__ = ["BatchClient", "BatchStatus", "BatchOutput", "Submitted", "TERMINAL", "BATCH_PATH"]

log = logging.getLogger("jinabatch.jina.batch")
BATCH_PATH = "/batch"
TERMINAL = ("completed", "failed", "cancelled")
POLL_GROWTH = 1.5
_PREFIX = "request-"


@dataclass(frozen=True)
class Submitted:
    """A batch the API accepted: its id, the key (index in the pool) it belongs to, when (epoch s)."""

    batch_id: str
    key: int
    created_at: float


@dataclass(frozen=True)
class BatchStatus:
    batch_id: str
    status: str  # submitted | processing | completed | failed | cancelled
    total: int = 0
    completed: int = 0
    failed: int = 0
    tokens: int = 0
    error: str | None = None
    completed_at: float | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @classmethod
    def of(cls, doc: dict[str, Any]) -> "BatchStatus":
        st = doc.get("stats") or {}
        err = doc.get("error")
        return cls(str(doc.get("batch_id", "")), str(doc.get("status", "")), int(st.get("total") or 0),
                   int(st.get("completed") or 0), int(st.get("failed") or 0), int(st.get("total_tokens") or 0),
                   short_text(orjson.dumps(err)) if isinstance(err, dict) else err, doc.get("completed_at"))


@dataclass
class BatchOutput:
    """One batch's output: ``vectors[i]`` for each input ``i`` with ``ok[i]``; ``failed``: input -> the API's
    reason; ``unknown``: custom_ids of lines for no submitted input; ``tokens``: usage summed over the items."""

    vectors: np.ndarray
    ok: np.ndarray
    failed: dict[int, str] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)
    tokens: int = 0

    @property
    def missing(self) -> list[int]:
        """Inputs the output says nothing about."""
        return [i for i in np.flatnonzero(~self.ok).tolist() if i not in self.failed]


def parse_custom_id(custom_id: Any, n: int) -> int | None:
    """``request-N`` → N when 0 <= N < n, else None (an id this batch never had)."""
    if not isinstance(custom_id, str) or not custom_id.startswith(_PREFIX):
        return None
    tail = custom_id[len(_PREFIX):]
    return int(tail) if tail.isdigit() and int(tail) < n else None


def _in_flight_cap(message: str) -> bool:
    return "batches in flight" in message.lower()


def _bad(msg: str) -> ResponseError:
    return ResponseError(f"Batch Embeddings API output: {msg}", status=200)


def read_line(line: bytes | str, out: BatchOutput, n: int, dim: int) -> None:
    """Fold one JSONL line into ``out``. A line that is not JSON (a cut download) raises TransportError."""
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise TransportError(f"a line of the output is not JSON ({short_text(line, 80)!r}): the download was "
                             "cut; downloading again") from None
    i = parse_custom_id(doc.get("custom_id") if isinstance(doc, dict) else None, n)
    if i is None:
        out.unknown.append(str(doc.get("custom_id") if isinstance(doc, dict) else doc)[:80])
        return
    resp = doc.get("response") or {}
    body = resp.get("body") or {}
    if resp.get("status_code") != 200:
        out.failed[i] = f"{resp.get('status_code')}: {short_text(orjson.dumps(body)) if body else 'no detail'}"
        return
    try:
        row = np.asarray(body["data"][0]["embedding"], dtype=np.float32)
    except (KeyError, IndexError, TypeError, ValueError):
        raise _bad(f"the line of {doc.get('custom_id')} has no data[0].embedding of numbers") from None
    if row.shape != (dim,) or not np.isfinite(row).all():
        raise _bad(f"the embedding of {doc.get('custom_id')} has {row.shape[0] if row.ndim else 0} values "
                   f"(expected {dim}) or non-finite ones")
    out.vectors[i] = row
    out.ok[i] = True
    out.tokens += int((body.get("usage") or {}).get("total_tokens") or 0)


async def _lines(resp: httpx.Response):
    """The body's non-empty lines as bytes (orjson parses bytes; no text decoding of ~100 MB)."""
    tail = b""
    async for chunk in resp.aiter_bytes():
        parts = (tail + chunk).split(b"\n")
        tail = parts.pop()
        for p in parts:
            if p.strip():
                yield p
    if tail.strip():
        yield tail


class BatchClient:
    """Async client for ``{base_url}/batch``. ``api_key``: one key or the pool (batches go on the key a permit names);
    ``limiter``: what submits pass (default: none). Use ``async with`` or call :meth:`aclose`."""

    def __init__(self, settings: JinaSettings, *, api_key: Secret | KeyPool, base_url: str,
                 limiter: Limiter | None = None, transport: httpx.AsyncBaseTransport | None = None,
                 sleep: Callable[[float], Any] = asyncio.sleep):
        self.settings, self.spec = settings, settings.spec
        self.base_url = base_url.rstrip("/")
        self._pool = list(api_key) if isinstance(api_key, KeyPool) else [api_key]
        self._auths = [BearerAuth(k) for k in self._pool]
        self.limiter: Limiter = limiter or NoLimiter()
        self._sleep = sleep
        s = settings
        timeout = http_timeout(s)
        headers = {"User-Agent": "jinabatch"}
        # two pools: submits never wait for a connection a download or a poll holds
        self._submits = httpx.AsyncClient(transport=transport, timeout=timeout, headers=headers)
        self._reads = httpx.AsyncClient(transport=transport, timeout=timeout, headers=headers)
        self.counts = {"submits": 0, "polls": 0, "downloads": 0, "download_retries": 0, "cancels": 0,
                       "requests": 0, "http_429": 0, "retries": 0, "tokens": 0}

    async def __aenter__(self) -> "BatchClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._submits.aclose()
        await self._reads.aclose()

    def __repr__(self) -> str:
        return f"BatchClient(model={self.spec.name!r}, base_url={self.base_url!r}, api_key=***)"

    def __reduce__(self):
        raise TypeError("BatchClient is not picklable: create one inside each worker (it holds the API key)")

    @property
    def stats(self) -> ClientStats:
        """As ``JinaClient.stats``: HTTP requests (submits, polls, downloads, cancels), tokens of the outputs
        downloaded, batches submitted."""
        c = self.counts
        return ClientStats(c["requests"], c["retries"], c["http_429"], c["tokens"], c["submits"], {})

    def _key_name(self, key: int) -> str:
        return self._pool[key].name or self.settings.api_key_env[min(key, len(self.settings.api_key_env) - 1)]

    def _scrub(self, content: bytes) -> bytes:
        return scrub_bytes(self._pool, content)

    def _error(self, resp: httpx.Response, key: int, batch_id: str | None) -> JinaError:
        if batch_id is not None and resp.status_code in (404, 410):
            why = "no longer knows it" if resp.status_code == 404 else "expired its output"
            detail = short_text(self._scrub(resp.content))
            return BatchGone(f"the Batch Embeddings API {why} ({resp.status_code}: {detail}) for batch {batch_id}",
                             status=resp.status_code)
        return error_for_status(resp.status_code, self._scrub(resp.content), resp.headers, model=self.spec.name,
                                key_env=self._key_name(key))

    # -- retries ---------------------------------------------------------------------------------
    async def _retrying(self, what: str, call: Callable[[], Any]) -> Any:
        """``call()`` retried like ``JinaClient.embed_batch``: 429s after Retry-After within jina.retry_timeout,
        faults up to jina.max_attempts."""
        s = self.settings
        faults = limited = attempts = 0

        def hook(exc: Exception) -> bool | float:
            nonlocal faults, limited
            if not isinstance(exc, TransientError):
                return False
            self.counts["retries"] += 1
            if isinstance(exc, RateLimited):
                limited += 1
                if exc.retry_after is not None:
                    wait = min(exc.retry_after, s.retry_after_max)
                    return wait + random.uniform(0, min(1.0, 0.1 * wait))
                return self._backoff(limited)
            faults += 1
            return self._backoff(faults) if faults < s.max_attempts else False

        try:
            async for attempt in stamina.retry_context(on=hook, attempts=None, timeout=s.retry_timeout):
                with attempt:
                    attempts += 1
                    return await call()
        except TransientError as e:
            why = (f"all {faults} attempts (jina.max_attempts) failed" if faults >= s.max_attempts else
                   f"the retry budget of {s.retry_timeout:g}s (jina.retry_timeout) ran out ({limited} answered 429)")
            raise RetriesExhausted(f"{what}: {why}; last error: {type(e).__name__}: {e}", attempts=attempts,
                                   last=e) from None

    def _backoff(self, n: int) -> float:
        return backoff(self.settings, n)

    async def _send(self, http: httpx.AsyncClient, method: str, path: str, key: int, *,
                    batch_id: str | None = None, **kw: Any) -> httpx.Response:
        self.counts["requests"] += 1
        try:
            resp = await http.request(method, f"{self.base_url}{path}", auth=self._auths[key], **kw)
        except httpx.TransportError as e:
            raise TransportError(f"{type(e).__name__} talking to {self.base_url}: "
                                 f"{self._scrub(str(e).encode()).decode() or 'no detail'}") from None
        if resp.status_code >= 300:
            err = self._error(resp, key, batch_id)
            self.counts["http_429"] += isinstance(err, RateLimited)
            raise err
        return resp

    # -- the API ---------------------------------------------------------------------------------
    async def submit(self, texts: Sequence[str], *, task: str | None = ...) -> Submitted:  # type: ignore[assignment]
        """Submit ``texts`` as one batch (each attempt one request of the limiter's budget); returns its id and key."""
        s = self.settings
        body = build_body(self.spec, texts, embedding_type="float", task=s.embed_task if task is ... else task,
                          dimensions=s.dimensions, late_chunking=False, normalized=s.normalized, truncate=False,
                          fields=s.request_fields)
        return await self._retrying(f"submitting a batch of {len(texts)} inputs", lambda: self._submit_once(body))

    async def _submit_once(self, body: dict[str, Any]) -> Submitted:
        permit = await self.limiter.acquire(1)  # one request; the tokens are billed at completion, not here
        key = getattr(permit, "key", None) or 0
        extra = {"permit": permit} if permit is not None else {}
        limited, retry_after, limit = False, None, None
        try:
            self.counts["submits"] += 1
            resp = await self._send(self._submits, "POST", f"{BATCH_PATH}/embeddings", key, json=body)
            doc = resp.json()
            log.info("submitted %s: %d inputs on key%d", doc.get("batch_id"), len(body["input"]), key)
            return Submitted(str(doc["batch_id"]), key, float(doc.get("created_at") or time.time()))
        except RateLimited as e:
            # "batches in flight" is the API's cap on open batches, not on the key's rate: the submit waits and is
            # retried, but the pace of the key's requests is not slowed for it
            if not _in_flight_cap(str(e)):
                limited, retry_after, limit = True, e.retry_after, e.limit
            raise
        except (KeyError, ValueError):
            raise ResponseError("the Batch Embeddings API accepted a batch without a batch_id", status=202) from None
        finally:
            if limited:
                self.limiter.release(1, None, rate_limited=True, retry_after=retry_after, limit=limit, **extra)
            else:
                self.limiter.release(1, None, **extra)

    async def status(self, batch_id: str, key: int) -> BatchStatus:
        async def once() -> BatchStatus:
            self.counts["polls"] += 1
            resp = await self._send(self._reads, "GET", f"{BATCH_PATH}/{batch_id}", key, batch_id=batch_id)
            return BatchStatus.of(resp.json())
        return await self._retrying(f"status of {batch_id}", once)

    async def wait(self, batch_id: str, key: int, *, first: bool = False,
                   on_poll: Callable[[BatchStatus], None] | None = None) -> BatchStatus:
        """Poll until the batch is terminal (jittered, growing interval; ``first``: ask at once, for a batch
        recorded by an earlier run); JinaError after ``jina.batch.timeout`` seconds of waiting (a rerun waits on
        the same batch again, with a new timeout)."""
        b = self.settings.batch
        deadline = time.monotonic() + b.timeout
        interval = b.poll_initial
        while True:
            if not first:
                await self._sleep(interval * (1 + random.uniform(0, b.poll_jitter)))
            first = False
            st = await self.status(batch_id, key)
            if on_poll is not None:
                on_poll(st)
            if st.terminal:
                return st
            if time.monotonic() > deadline:
                raise JinaError(f"batch {batch_id} is still {st.status} after waiting jina.batch.timeout = "
                                f"{b.timeout:g}s; a rerun waits on it again (it is not submitted again)")
            interval = min(b.poll_max, interval * POLL_GROWTH)

    async def output(self, batch_id: str, key: int, n: int, dim: int) -> BatchOutput:
        """The whole output, matched to the ``n`` inputs by custom_id; a broken download starts over."""
        tries = 0

        async def once() -> BatchOutput:
            nonlocal tries
            tries += 1
            if tries > 1:
                self.counts["download_retries"] += 1
                log.warning("downloading the output of %s again from the start (attempt %d)", batch_id, tries)
            return await self._download(f"{BATCH_PATH}/{batch_id}/output", batch_id, key, n, dim)
        out = await self._retrying(f"output of {batch_id}", once)
        self.counts["tokens"] += out.tokens
        return out

    async def errors(self, batch_id: str, key: int, n: int) -> dict[int, str]:
        """The failed items (``/errors``): input -> the API's reason."""
        out = await self._retrying(f"errors of {batch_id}", lambda: self._download(
            f"{BATCH_PATH}/{batch_id}/errors", batch_id, key, n, 0))
        return out.failed

    async def _download(self, path: str, batch_id: str, key: int, n: int, dim: int) -> BatchOutput:
        out = BatchOutput(np.zeros((n, dim), np.float32), np.zeros(n, bool))
        self.counts["downloads"] += 1
        self.counts["requests"] += 1
        try:
            async with self._reads.stream("GET", f"{self.base_url}{path}", auth=self._auths[key]) as resp:
                if resp.status_code >= 300:
                    await resp.aread()
                    raise self._error(resp, key, batch_id)
                async for line in _lines(resp):
                    read_line(line, out, n, dim)
        except httpx.TransportError as e:
            raise TransportError(f"the download of {path} broke ({type(e).__name__}: "
                                 f"{self._scrub(str(e).encode()).decode() or 'no detail'})") from None
        return out

    async def cancel(self, batch_id: str, key: int) -> bool:
        """DELETE the batch; True if it was cancelled now, False if it had already ended (409) or is gone."""
        self.counts["cancels"] += 1
        try:
            await self._send(self._reads, "DELETE", f"{BATCH_PATH}/{batch_id}", key, batch_id=batch_id)
            return True
        except (BatchGone, JinaError) as e:
            if e.status in (404, 409, 410):
                return False
            raise

"""The async Jina embeddings client.

One :class:`JinaClient` owns one pooled ``httpx.AsyncClient`` (explicit connect/read timeouts from
:class:`~jinabatch.config.JinaSettings`). The unit of work is :meth:`JinaClient.embed_batch`: exactly one
request, retried by **stamina** on :class:`~jinabatch.errors.TransientError` only, under two budgets —
faults (5xx, dropped connections, timeouts) count against ``jina.max_attempts`` with exponential backoff
and jitter; 429s do not (they mean "later", not "broken") and are retried after the server's
``Retry-After`` (or a backoff) for as long as ``jina.retry_timeout`` allows, which bounds both.

Every HTTP attempt, retries included, passes through a :class:`Limiter` (acquire before, release after with
the tokens the server actually billed and what a 429 said), so the limiter sees the real traffic. Without
one the client paces itself with an :class:`~jinabatch.jina.pacing.AdaptiveLimiter` (learns the key's rates
from usage and 429s; a 429 pauses the whole client); ``rpm=`` / ``tpm=`` give it a
:class:`~jinabatch.jina.limits.WorkerLimiter` at those rates instead. :meth:`JinaClient.embed`
cuts texts into requests of the limiter's current size as it goes, runs them concurrently, and splits a
request a 429 refused when it is bigger than the budget learnt since.

Caps the model table does not give (``JinaSettings.max_inputs`` starts cautious) are learnt from the API: a 400/422
naming a request cap (``wire.cap_named``) lowers this client's inputs or tokens per request (or its late-chunking
context) for every request after it; :meth:`JinaClient.embed` re-sends the refused texts in requests that fit.

The API key lives in a :class:`~jinabatch.jina.keys.Secret` whose repr/str are ``***`` and which refuses to
pickle; it is only ever written into the ``Authorization`` header by an ``httpx.Auth`` hook. httpx
exceptions (whose ``.request`` carries that header) are never chained onto ours, and server messages are
scrubbed of the key before they reach an exception or a log line.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pydantic
import stamina

from ..config import LOCAL_BASE_URL, JinaSettings
from ..errors import (
    ConfigError,
    InvalidRequest,
    JinaError,
    RateLimited,
    RetriesExhausted,
    TransientError,
    TransportError,
)
from .keys import FALLBACK_KEY_ENV, KeyPool, Secret, resolve_api_key
from .limits import Limiter, NoLimiter, explicit_limiter
from .pacing import AdaptiveLimiter
from .tokens import TokenEstimator, next_batch, plan_batches, raw_estimate
from .wire import DTYPES, build_body, cap_named, decode_response, error_for_status, row_width, short_text

__all__ = ["JinaClient", "BearerAuth", "BatchResult", "ClientStats", "Limiter", "NoLimiter", "Secret", "KeyPool",
           "resolve_api_key", "FALLBACK_KEY_ENV", "http_timeout", "backoff", "scrub_bytes"]

log = logging.getLogger("jinabatch.jina")


class BearerAuth(httpx.Auth):
    def __init__(self, key: Secret):
        self._key = key

    def auth_flow(self, request: httpx.Request):
        request.headers["Authorization"] = f"Bearer {self._key.get()}"
        yield request

    def __repr__(self) -> str:
        return "BearerAuth(***)"


@dataclass(frozen=True)
class BatchResult:
    """One request's outcome: vectors in input order, billed tokens, our estimate, HTTP attempts made."""

    vectors: np.ndarray
    tokens: int
    estimated_tokens: int
    attempts: int


@dataclass(frozen=True)
class ClientStats:
    requests: int = 0  # HTTP attempts sent (retries included)
    retries: int = 0
    http_429: int = 0
    tokens: int = 0  # from usage.total_tokens
    batches: int = 0  # embed_batch calls that succeeded
    errors: dict[str, int] = field(default_factory=dict)  # by exception class, every failed attempt

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "retries": self.retries, "http_429": self.http_429,
                "tokens": self.tokens, "batches": self.batches, "errors": dict(self.errors)}


class _Split(Exception):
    """Internal: a request a 429 refused is bigger than the budget learnt since; JinaClient.embed halves it."""


def http_timeout(s: JinaSettings) -> httpx.Timeout:
    """The connect / read timeouts of ``[jina]`` as httpx's (a write or a wait for a pooled connection: as a read)."""
    return httpx.Timeout(connect=s.connect_timeout, read=s.read_timeout, write=s.read_timeout, pool=s.read_timeout)


def backoff(s: JinaSettings, n: int) -> float:
    """Seconds before the ``n``-th retry of a fault: exponential from jina.retry_wait_initial, capped, jittered."""
    return min(s.retry_wait_max, s.retry_wait_initial * 2 ** max(0, n - 1)) + random.uniform(0, s.retry_wait_jitter)


def scrub_bytes(pool: Sequence[Secret], content: bytes) -> bytes:
    """``content`` with every key of ``pool`` replaced by ``***`` (an answer that echoes the key)."""
    for k in pool:
        if k.get() and k.get().encode() in content:
            content = content.replace(k.get().encode(), b"***")
    return content


class JinaClient:
    """Async client for ``POST {base_url}/embeddings``. Use ``async with`` or call :meth:`aclose`.

    ``rpm`` / ``tpm``: limits to stay under (a ``WorkerLimiter``); without them and without ``limiter`` the
    client learns its pace (``AdaptiveLimiter``). ``jina.concurrency`` caps the requests in flight either way.
    """

    def __init__(self, settings: JinaSettings | None = None, *, api_key: str | Secret | KeyPool | None = None,
                 base_url: str | None = None, limiter: Limiter | None = None,
                 transport: httpx.AsyncBaseTransport | None = None,
                 estimator: TokenEstimator | None = None, rpm: float | None = None, tpm: float | None = None,
                 **overrides: Any):
        settings = settings or JinaSettings()
        if overrides:
            try:
                # exclude_unset: what the user wrote stays what they wrote (a model the table does not know gets
                # only those fields)
                settings = JinaSettings.model_validate({**settings.model_dump(exclude_unset=True), **overrides})
            except pydantic.ValidationError as e:
                msgs = "; ".join(f"{'.'.join(map(str, x['loc'])) or 'settings'}: {x['msg']}" for x in e.errors())
                raise ConfigError(f"JinaClient: invalid jina settings: {msgs}") from None
        self.settings = settings
        self.spec = settings.spec
        url = (base_url or settings.base_url).rstrip("/")
        if url == LOCAL_BASE_URL:
            raise ConfigError("jina.base_url = 'local' means the job starts the bundled server; pass its URL "
                              "(LocalServer(...).url) as base_url to JinaClient")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"jina.base_url must be an http(s) URL ending in /v1; got {url!r}")
        self.base_url = url
        self._key = resolve_api_key(api_key, settings.api_key_env)
        # a pool: the limiter may send a request with any of its keys (a permit naming it); the first is the default
        self._pool: list[Secret] = list(api_key) if isinstance(api_key, KeyPool) else [self._key]
        self._auths = [BearerAuth(k) for k in self._pool]
        self._key_env = self._key.name or settings.api_key_env[0]
        for name, v in (("rpm", rpm), ("tpm", tpm)):
            if v is not None and not v > 0:
                raise ConfigError(f"JinaClient: {name} must be > 0 (a limit per minute); got {v!r}")
        if limiter is None:
            limiter = (explicit_limiter(rpm, tpm, settings.concurrency, settings.max_tokens_per_request)
                       if rpm or tpm else
                       AdaptiveLimiter(concurrency=settings.concurrency,
                                       max_request_tokens=settings.max_tokens_per_request))
        elif rpm or tpm:
            raise ConfigError("JinaClient: pass either limiter= or rpm=/tpm=, not both")
        self.limiter: Limiter = limiter
        self.estimator = estimator or TokenEstimator()
        s = settings
        # a width asked for, fixed by the model or answered to the endpoint check is held to; otherwise (dimensions
        # unset) the server's first answer gives it, and the client holds it to that
        self._dim: int | None = (s.dim if s.dimensions is not None or not s.spec.takes_dimensions or s.answered_dim
                                 else None)
        self._caps: dict[str, int] = {}  # caps learnt from the API's 4xx: "inputs", "tokens" (per request)
        self._http = httpx.AsyncClient(
            auth=BearerAuth(self._key), transport=transport,
            timeout=http_timeout(s),
            limits=httpx.Limits(max_connections=max(8, 2 * s.concurrency),
                                max_keepalive_connections=max(4, s.concurrency)),
            headers={"Accept": "application/json", "User-Agent": "jinabatch"})
        self._requests = self._retries = self._429 = self._tokens = self._batches = 0
        self._errors: Counter[str] = Counter()

    # -- lifecycle -------------------------------------------------------------------------------
    async def __aenter__(self) -> "JinaClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def __repr__(self) -> str:
        return (f"JinaClient(model={self.spec.name!r}, base_url={self.base_url!r}, api_key=***, "
                f"limiter={self.limiter!r})")

    def __reduce__(self):
        raise TypeError("JinaClient is not picklable: create one inside each worker (it holds the API key "
                        "and a connection pool)")

    # -- introspection ---------------------------------------------------------------------------
    @property
    def dim(self) -> int | None:
        """The output dimension: configured, fixed by the model, or learned from the first response."""
        return self._dim

    @property
    def stats(self) -> ClientStats:
        return ClientStats(self._requests, self._retries, self._429, self._tokens, self._batches,
                           dict(self._errors))

    @property
    def max_inputs(self) -> int:
        """Inputs per request: ``JinaSettings.max_inputs``, or less once the API named a smaller cap."""
        return min(self.settings.max_inputs, self._caps.get("inputs", self.settings.max_inputs))

    def max_tokens(self, *, late_chunking: bool | None = None) -> int:
        """Token budget per request (under late chunking, also the model's context), or less once the API named a
        smaller cap (a context it named counts under late chunking only)."""
        lc = self.settings.late_chunking if late_chunking is None else late_chunking
        budget = self.settings.max_tokens_per_request
        budget = min(budget, self._caps.get("tokens", budget))
        return min(budget, self.settings.context, self._caps.get("context", budget)) if lc else budget

    def text_estimate(self, *, truncate: bool = False):
        """The calibrated per-text estimate (a function of one text) as of now; under ``truncate`` never above
        the model's token cap, which is what the server bills an input it cuts."""
        ratio, cap = self.estimator.ratio, (self.spec.max_tokens if truncate else None)
        return (lambda t: min(raw_estimate(t) * ratio, cap)) if cap else (lambda t: raw_estimate(t) * ratio)

    def plan_batches(self, texts: Sequence[str], *, truncate: bool = False) -> list[list[int]]:
        """:func:`~jinabatch.jina.tokens.plan_batches` with this client's caps and calibrated estimate."""
        return plan_batches(texts, max_inputs=self.max_inputs, max_tokens=self.max_tokens(),
                            estimate=self.text_estimate(truncate=truncate))

    def _estimate(self, texts: list[str], truncate: bool, late_chunking: bool) -> tuple[int, float | None]:
        """(tokens to reserve for one request, raw estimate to calibrate with — None when an input is capped).

        Under ``truncate`` the server bills an input (or a late-chunking request, all inputs being one sequence)
        at most the model's cap: the estimate is capped there, and such a request teaches nothing about the
        ratio, since the server billed the cap, not the text."""
        raw, ratio, cap = self.estimator.raw(texts), self.estimator.ratio, self.spec.max_tokens
        if not truncate or cap is None:  # no cap to bill at (a context Jina does not publish: the API decides)
            return max(1, round(raw * ratio)), raw
        if late_chunking:
            return max(1, round(min(raw * ratio, cap))), raw if raw * ratio <= cap else None
        per = [raw_estimate(t) * ratio for t in texts]
        capped = any(p > cap for p in per)
        return max(1, round(sum(min(p, cap) for p in per))), None if capped else raw

    # -- requests --------------------------------------------------------------------------------
    def _task(self, task: str | None) -> str | None:
        if "task" not in self.settings.request_fields:
            return None
        try:
            self.spec.check_task(task)
        except ValueError as e:
            raise ConfigError(f"task {task!r}: {e}") from None
        return task

    def _request_tokens(self) -> int:
        """Request size now: the limiter's (learnt or configured), within jina.max_tokens_per_request."""
        hint = getattr(self.limiter, "request_tokens", None)
        size = hint() if callable(hint) else None
        return min(self.max_tokens(), size) if size else self.max_tokens()

    def _backoff(self, n: int) -> float:
        return backoff(self.settings, n)

    async def embed_batch(self, texts: Sequence[str], *, task: str | None = ..., truncate: bool = False,
                          late_chunking: bool | None = None) -> BatchResult:  # type: ignore[assignment]
        """Embed ``texts`` in exactly one request (with retries). Vectors come back in input order.

        ``task`` defaults to ``settings.embed_task`` (pass None to send none; ignored by models without tasks).
        Raises InvalidRequest / AuthError / BillingError / ResponseError at once; RetriesExhausted when faults
        outlast ``jina.max_attempts`` or anything outlasts ``jina.retry_timeout`` (429s only count there).
        """
        return await self._embed_batch(texts, task=task, truncate=truncate, late_chunking=late_chunking)

    async def _embed_batch(self, texts: Sequence[str], *, task: str | None, truncate: bool,
                           late_chunking: bool | None, splittable: bool = False) -> BatchResult:
        s = self.settings
        texts = list(texts)
        if not texts:
            width = row_width(s.wire_type, self._dim or 0)
            return BatchResult(np.empty((0, width), DTYPES[s.wire_type]), 0, 0, 0)
        late = s.late_chunking if late_chunking is None else late_chunking
        body = build_body(self.spec, texts, embedding_type=s.embedding_type,
                          task=self._task(s.embed_task if task is ... else task), dimensions=s.dimensions,
                          late_chunking=late, normalized=s.normalized, truncate=truncate, fields=s.request_fields)
        estimated, raw = self._estimate(texts, truncate, late)
        attempts, faults, limited, split = 0, 0, 0, False

        def retry_hook(exc: Exception) -> bool | float:
            nonlocal faults, limited, split
            if not isinstance(exc, TransientError):
                return False
            if isinstance(exc, RateLimited):  # "later": paced by the limiter, bounded by jina.retry_timeout
                limited += 1
                if splittable and len(texts) > 1 and estimated > self._request_tokens():
                    split = True
                    return False
                if exc.retry_after is not None:
                    wait = min(exc.retry_after, s.retry_after_max)
                    return wait + random.uniform(0, min(1.0, 0.1 * wait))  # never earlier than the server asked
                return self._backoff(limited)
            faults += 1  # "broken": jina.max_attempts of them
            return self._backoff(faults) if faults < s.max_attempts else False

        try:
            async for attempt in stamina.retry_context(on=retry_hook, attempts=None, timeout=s.retry_timeout):
                with attempt:
                    attempts += 1
                    if attempts > 1:
                        self._retries += 1
                    vectors, used = await self._attempt(body, len(texts), estimated, attempts)
        except TransientError as e:
            if split:
                raise _Split() from None
            if faults >= s.max_attempts:
                why = f"all {faults} attempts (jina.max_attempts) failed"
            else:
                why = (f"the retry budget of {s.retry_timeout:g}s (jina.retry_timeout) ran out after {attempts} "
                       f"attempts ({limited} answered 429)")
            log.warning("giving up on a batch of %d inputs after %d attempts: %s", len(texts), attempts, e)
            raise RetriesExhausted(f"{why}; last error: {type(e).__name__}: {e}", attempts=attempts, last=e) from None
        if used is not None and raw is not None:
            self.estimator.observe(raw, used)
        self._batches += 1
        return BatchResult(vectors, used if used is not None else estimated, estimated, attempts)

    async def _attempt(self, body: dict[str, Any], n: int, estimated: int, attempt: int) -> tuple[np.ndarray, int | None]:
        s = self.settings
        used: int | None = None
        rate_limited, retry_after, limit = False, None, None
        permit = await self.limiter.acquire(estimated)
        slot = getattr(permit, "key", None)
        key = self._pool[slot] if slot is not None and slot < len(self._pool) else self._key
        try:
            self._requests += 1
            log.debug("POST %s/embeddings model=%s inputs=%d est_tokens=%d attempt=%d",
                      self.base_url, self.spec.name, n, estimated, attempt)
            t0 = time.perf_counter()
            try:
                resp = await self._http.post(f"{self.base_url}/embeddings", json=body,
                                             auth=self._auths[slot] if key is not self._key else httpx.USE_CLIENT_DEFAULT)
            except httpx.UnsupportedProtocol as e:
                raise ConfigError(f"jina.base_url {self.base_url!r}: {e}") from None
            except httpx.TransportError as e:
                raise TransportError(f"{type(e).__name__} talking to {self.base_url}: {self._scrub(str(e)) or 'no detail'}"
                                     f" (timeouts: jina.connect_timeout={s.connect_timeout:g}s, "
                                     f"jina.read_timeout={s.read_timeout:g}s)") from None
            if resp.status_code >= 300:
                err = error_for_status(resp.status_code, self._scrub_bytes(resp.content), resp.headers,
                                       model=self.spec.name, key_env=key.name or self._key_env)
                if isinstance(err, RateLimited):
                    self._429 += 1
                    rate_limited, retry_after, limit = True, err.retry_after, err.limit
                elif isinstance(err, InvalidRequest):
                    self._learn_cap(short_text(resp.content), n)
                raise err
            vectors, used = decode_response(resp.content, n_inputs=n, embedding_type=s.wire_type, dim=self._dim)
            if self._dim is None:
                self._dim = vectors.shape[1] * (8 if s.wire_type in ("binary", "ubinary") else 1)
            if used is not None:
                self._tokens += used
            log.debug("200 inputs=%d tokens=%s in %.3fs", n, used, time.perf_counter() - t0)
            return vectors, used
        except JinaError as e:
            self._errors[type(e).__name__] += 1
            level = logging.INFO if isinstance(e, TransientError) else logging.WARNING
            log.log(level, "attempt %d of a batch of %d inputs failed: %s: %s", attempt, n, type(e).__name__, e)
            raise
        finally:
            extra = {"permit": permit} if permit is not None else {}  # limiters of our own take none
            if rate_limited:
                self.limiter.release(estimated, used, rate_limited=True, retry_after=retry_after, limit=limit,
                                     **extra)
            else:
                self.limiter.release(estimated, used, **extra)

    def _learn_cap(self, detail: str, inputs: int) -> None:
        """A 400/422 that names a request cap lowers this client's (``wire.cap_named``)."""
        named = cap_named(detail, self.spec.name, inputs=inputs)
        if named is None:
            return
        kind, cap = named
        now = self.max_inputs if kind == "inputs" else self.max_tokens(late_chunking=kind == "context")
        if cap < now:
            self._caps[kind] = cap
            log.warning("%s refused a request naming its cap (%s): requests now hold at most %d %s", self.spec.name,
                        self._scrub(detail), cap, kind)

    def _scrub(self, text: str) -> str:
        for k in self._pool:
            if k.get() and k.get() in text:
                text = text.replace(k.get(), "***")
        return text

    def _scrub_bytes(self, content: bytes) -> bytes:
        return scrub_bytes(self._pool, content)

    async def embed(self, texts: Sequence[str], *, task: str | None = ..., truncate: bool = False) -> np.ndarray:  # type: ignore[assignment]
        """Embed any number of texts, returned in input order.

        Consecutive texts are cut into requests of the limiter's current size (``jina.max_inputs_per_request``
        and ``jina.max_tokens_per_request`` at most) as requests are sent, ``jina.concurrency`` at a time;
        a request a 429 refused that has grown bigger than the learnt budget is split in halves."""
        texts = list(texts)
        if not texts:
            return (await self.embed_batch([], task=task, truncate=truncate)).vectors
        n, cursor = len(texts), 0
        results: dict[int, np.ndarray] = {}  # first index of a request -> its vectors
        redo: list[tuple[int, int]] = []  # halves of split requests, done first
        requests = 0

        def next_range() -> tuple[int, int] | None:
            nonlocal cursor
            if redo:
                return redo.pop()
            if cursor >= n:
                return None
            start = cursor
            cursor = next_batch(texts, start, max_inputs=self.max_inputs, max_tokens=self._request_tokens(),
                                estimate=self.text_estimate(truncate=truncate))
            return start, cursor

        async def run(start: int, stop: int) -> None:
            nonlocal requests
            try:
                res = await self._embed_batch(texts[start:stop], task=task, truncate=truncate, late_chunking=None,
                                              splittable=True)
            except _Split:
                mid = (start + stop) // 2
                log.info("splitting a request of %d inputs refused with 429: bigger than the budget learnt since",
                         stop - start)
                redo.extend([(mid, stop), (start, mid)])
                return
            except InvalidRequest:
                if stop - start <= self.max_inputs:  # not a cap it just learnt: the request itself is refused
                    raise
                size = self.max_inputs
                redo.extend(reversed([(i, min(i + size, stop)) for i in range(start, stop, size)]))
                return
            results[start] = res.vectors
            requests += 1

        async def worker() -> None:
            while (r := next_range()) is not None:
                await run(*r)

        # the first request alone: learns the width (dimensions unset) and calibrates the estimate
        await run(*next_range())  # type: ignore[misc]
        try:
            async with asyncio.TaskGroup() as tg:  # one failure cancels the rest
                for _ in range(self.settings.concurrency):
                    tg.create_task(worker())
        except BaseExceptionGroup as eg:  # surface the first error itself, typed
            first = eg.exceptions[0]
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            raise first from None
        log.info("embedded %d texts in %d requests", n, requests)
        return np.concatenate([results[i] for i in sorted(results)], axis=0)  # ranges are consecutive: input order

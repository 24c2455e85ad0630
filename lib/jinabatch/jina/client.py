"""The async Jina embeddings client.

One :class:`JinaClient` owns one pooled ``httpx.AsyncClient`` (explicit connect/read timeouts from
:class:`~jinabatch.config.JinaSettings`). The unit of work is :meth:`JinaClient.embed_batch`:
exactly one request, retried by **stamina** on :class:`~jinabatch.errors.TransientError` only —
exponential backoff with jitter, except after a 429 carrying ``Retry-After``, where the backoff hook
returns the server's wait instead. Every HTTP attempt, retries included, passes through the
:class:`Limiter` (acquire before, release after with the tokens the server actually billed), so a
per-worker rate limiter sees the real traffic. :meth:`JinaClient.embed` packs texts with
:func:`~jinabatch.jina.tokens.plan_batches` and runs the batches concurrently.

The API key lives in a :class:`Secret` whose repr/str are ``***`` and which refuses to pickle; it
is only ever written into the ``Authorization`` header by an ``httpx.Auth`` hook. httpx exceptions
(whose ``.request`` carries that header) are never chained onto ours, and server messages are
scrubbed of the key before they reach an exception or a log line.
"""
from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import httpx
import numpy as np
import pydantic
import stamina

from ..config import LOCAL_BASE_URL, JinaSettings
from ..errors import (
    AuthError,
    ConfigError,
    JinaError,
    RateLimited,
    RetriesExhausted,
    TransientError,
    TransportError,
)
from .tokens import TokenEstimator, plan_batches, raw_estimate
from .wire import DTYPES, build_body, decode_response, error_for_status, row_width

__all__ = ["JinaClient", "BatchResult", "ClientStats", "Limiter", "NoLimiter", "Secret", "resolve_api_key",
           "FALLBACK_KEY_ENV"]

log = logging.getLogger("jinabatch.jina")

FALLBACK_KEY_ENV = "JINA_API_KEY"


class Secret:
    """Holds a credential; prints as ``***`` and cannot be pickled (so it never rides along unseen)."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "***"

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("the API key is not picklable; pass the name of its environment variable instead")


def resolve_api_key(api_key: str | Secret | None, key_env: str = "JINAAI_API_KEY") -> Secret:
    """The key from the argument, else ``$key_env``, else ``$JINA_API_KEY``; AuthError if none is set."""
    if isinstance(api_key, Secret):
        return api_key
    value = api_key or os.environ.get(key_env) or os.environ.get(FALLBACK_KEY_ENV)
    if not value or not value.strip():
        names = " or ".join(dict.fromkeys([key_env, FALLBACK_KEY_ENV]))
        raise AuthError(f"no Jina API key: set {names} in the environment (or pass api_key=...); "
                        "get a key at https://jina.ai/embeddings")
    return Secret(value.strip())


class _BearerAuth(httpx.Auth):
    def __init__(self, key: Secret):
        self._key = key

    def auth_flow(self, request: httpx.Request):
        request.headers["Authorization"] = f"Bearer {self._key.get()}"
        yield request

    def __repr__(self) -> str:
        return "_BearerAuth(***)"


@runtime_checkable
class Limiter(Protocol):
    """Admission control for each HTTP attempt (the real one is ``jinabatch.jina.limits``)."""

    async def acquire(self, tokens: int) -> None:
        """Wait for 1 request + ``tokens`` of budget + a concurrency slot."""

    def release(self, tokens_estimated: int, tokens_used: int | None, *, rate_limited: bool = False,
                retry_after: float | None = None) -> None:
        """Free the slot, settle tokens (debit the difference), hear about a 429."""


class NoLimiter:
    """The default: admits everything at once."""

    async def acquire(self, tokens: int) -> None:
        return None

    def release(self, tokens_estimated: int, tokens_used: int | None, *, rate_limited: bool = False,
                retry_after: float | None = None) -> None:
        return None

    def __repr__(self) -> str:
        return "NoLimiter()"


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


class JinaClient:
    """Async client for ``POST {base_url}/embeddings``. Use ``async with`` or call :meth:`aclose`."""

    def __init__(self, settings: JinaSettings | None = None, *, api_key: str | None = None,
                 base_url: str | None = None, limiter: Limiter | None = None,
                 transport: httpx.AsyncBaseTransport | None = None,
                 estimator: TokenEstimator | None = None, **overrides: Any):
        settings = settings or JinaSettings()
        if overrides:
            try:
                settings = JinaSettings.model_validate({**settings.model_dump(), **overrides})
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
        self.limiter: Limiter = limiter or NoLimiter()
        self.estimator = estimator or TokenEstimator()
        s = settings
        # dimensions unset on a model that takes them: accept the server's width, then hold it to it
        self._dim: int | None = (s.dimensions if s.spec.takes_dimensions else s.spec.default_dim)
        self._http = httpx.AsyncClient(
            auth=_BearerAuth(self._key), transport=transport,
            timeout=httpx.Timeout(connect=s.connect_timeout, read=s.read_timeout, write=s.read_timeout,
                                  pool=s.read_timeout),
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
        cap = self.settings.max_inputs_per_request
        return min(cap, self.spec.max_inputs) if cap else self.spec.max_inputs

    def max_tokens(self, *, late_chunking: bool | None = None) -> int:
        """Token budget per request (under late chunking, also the model's context)."""
        lc = self.settings.late_chunking if late_chunking is None else late_chunking
        budget = self.settings.max_tokens_per_request
        return min(budget, self.spec.max_tokens) if lc else budget

    def plan_batches(self, texts: Sequence[str]) -> list[list[int]]:
        """:func:`~jinabatch.jina.tokens.plan_batches` with this client's caps and calibrated estimate."""
        ratio = self.estimator.ratio
        return plan_batches(texts, max_inputs=self.max_inputs, max_tokens=self.max_tokens(),
                            estimate=lambda t: raw_estimate(t) * ratio)

    # -- requests --------------------------------------------------------------------------------
    def _task(self, task: str | None) -> str | None:
        if not self.spec.takes_task:
            return None
        if task is not None and task not in self.spec.tasks:
            raise ConfigError(f"task {task!r} is not accepted by {self.spec.name}; use one of {list(self.spec.tasks)}")
        return task

    def _retry_hook(self, exc: Exception) -> bool | float:
        if not isinstance(exc, TransientError):
            return False
        if isinstance(exc, RateLimited) and exc.retry_after is not None:
            wait = min(exc.retry_after, self.settings.retry_after_max)
            return wait + random.uniform(0, min(1.0, 0.1 * wait))  # never earlier than the server asked
        return True

    async def embed_batch(self, texts: Sequence[str], *, task: str | None = ..., truncate: bool = False,
                          late_chunking: bool | None = None) -> BatchResult:  # type: ignore[assignment]
        """Embed ``texts`` in exactly one request (with retries). Vectors come back in input order.

        ``task`` defaults to ``settings.task`` (pass None to send none; ignored by models without tasks).
        Raises InvalidRequest / AuthError / BillingError / ResponseError at once, RetriesExhausted when
        transient errors outlast ``jina.max_attempts`` or ``jina.retry_timeout``.
        """
        s = self.settings
        texts = list(texts)
        if not texts:
            width = row_width(s.embedding_type, self._dim or 0)
            return BatchResult(np.empty((0, width), DTYPES[s.embedding_type]), 0, 0, 0)
        body = build_body(self.spec, texts, embedding_type=s.embedding_type,
                          task=self._task(s.task if task is ... else task), dimensions=s.dimensions,
                          late_chunking=s.late_chunking if late_chunking is None else late_chunking,
                          normalized=s.normalized, truncate=truncate)
        raw = self.estimator.raw(texts)
        estimated = max(1, round(raw * self.estimator.ratio))
        attempts = 0
        try:
            async for attempt in stamina.retry_context(
                    on=self._retry_hook, attempts=s.max_attempts, timeout=s.retry_timeout,
                    wait_initial=s.retry_wait_initial, wait_max=s.retry_wait_max, wait_jitter=s.retry_wait_jitter):
                with attempt:
                    attempts += 1
                    if attempts > 1:
                        self._retries += 1
                    vectors, used = await self._attempt(body, len(texts), estimated, attempts)
        except TransientError as e:
            if attempts < s.max_attempts:
                why = f"the retry budget of {s.retry_timeout:g}s (jina.retry_timeout) ran out"
            else:
                why = f"all {attempts} attempts (jina.max_attempts) failed"
            log.warning("giving up on a batch of %d inputs after %d attempts: %s", len(texts), attempts, e)
            raise RetriesExhausted(f"{why}; last error: {type(e).__name__}: {e}", attempts=attempts, last=e) from None
        if used is not None:
            self.estimator.observe(raw, used)
        self._batches += 1
        return BatchResult(vectors, used if used is not None else estimated, estimated, attempts)

    async def _attempt(self, body: dict[str, Any], n: int, estimated: int, attempt: int) -> tuple[np.ndarray, int | None]:
        s = self.settings
        used: int | None = None
        rate_limited, retry_after = False, None
        await self.limiter.acquire(estimated)
        try:
            self._requests += 1
            log.debug("POST %s/embeddings model=%s inputs=%d est_tokens=%d attempt=%d",
                      self.base_url, self.spec.name, n, estimated, attempt)
            t0 = time.perf_counter()
            try:
                resp = await self._http.post(f"{self.base_url}/embeddings", json=body)
            except httpx.UnsupportedProtocol as e:
                raise ConfigError(f"jina.base_url {self.base_url!r}: {e}") from None
            except httpx.TransportError as e:
                raise TransportError(f"{type(e).__name__} talking to {self.base_url}: {self._scrub(str(e)) or 'no detail'}"
                                     f" (timeouts: jina.connect_timeout={s.connect_timeout:g}s, "
                                     f"jina.read_timeout={s.read_timeout:g}s)") from None
            if resp.status_code >= 300:
                err = error_for_status(resp.status_code, self._scrub_bytes(resp.content), resp.headers,
                                       model=self.spec.name, key_env=s.api_key_env)
                if isinstance(err, RateLimited):
                    self._429 += 1
                    rate_limited, retry_after = True, err.retry_after
                raise err
            vectors, used = decode_response(resp.content, n_inputs=n, embedding_type=s.embedding_type,
                                            dim=self._dim)
            if self._dim is None:
                self._dim = vectors.shape[1] * (8 if s.embedding_type in ("binary", "ubinary") else 1)
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
            self.limiter.release(estimated, used, rate_limited=rate_limited, retry_after=retry_after)

    def _scrub(self, text: str) -> str:
        key = self._key.get()
        return text.replace(key, "***") if key and key in text else text

    def _scrub_bytes(self, content: bytes) -> bytes:
        key = self._key.get().encode()
        return content.replace(key, b"***") if key in content else content

    async def embed(self, texts: Sequence[str], *, task: str | None = ..., truncate: bool = False) -> np.ndarray:  # type: ignore[assignment]
        """Embed any number of texts: packed into requests, run concurrently, returned in input order."""
        texts = list(texts)
        groups = self.plan_batches(texts)
        if not groups:
            return (await self.embed_batch([], task=task, truncate=truncate)).vectors
        sem = asyncio.Semaphore(self.settings.concurrency)
        results: list[np.ndarray | None] = [None] * len(groups)

        async def run(i: int, idx: list[int]) -> None:
            async with sem:
                res = await self.embed_batch([texts[j] for j in idx], task=task, truncate=truncate)
            results[i] = res.vectors

        # the first batch alone: learns the width (dimensions unset) and calibrates the estimate
        await run(0, groups[0])
        if len(groups) > 1:
            try:
                async with asyncio.TaskGroup() as tg:  # one failure cancels the rest
                    for i, idx in enumerate(groups[1:], start=1):
                        tg.create_task(run(i, idx))
            except BaseExceptionGroup as eg:  # surface the first error itself, typed
                first = eg.exceptions[0]
                while isinstance(first, BaseExceptionGroup):
                    first = first.exceptions[0]
                raise first from None
        log.info("embedded %d texts in %d requests", len(texts), len(groups))
        return np.concatenate(results, axis=0)  # groups are consecutive, so this is input order

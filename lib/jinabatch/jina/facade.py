"""``JinaEmbeddingFunction``: the seed's pymilvus.model class, on top of :class:`~jinabatch.jina.client.JinaClient`.

Same constructor and methods as ``pymilvus.model.dense.JinaEmbeddingFunction`` and its defaults
(``jina-embeddings-v3``, ``retrieval.passage``, 1024 dimensions), but every call is packed into requests, retried
and rate-limit aware, and vectors are float32. ``encode_documents`` and ``encode_queries`` use the two sides of the
model family's task (``jinabatch.models.ModelSpec.sides``): ``retrieval.passage`` / ``retrieval.query`` for v3, v4
and v5, ``nl2code.passage`` / ``nl2code.query`` for the code models (``qa.*`` ... when the constructor's task says
so), a symmetric task such as ``text-matching`` on both; calling the object uses the constructor's task.

Pacing: without limits the client learns the key's rates from usage and 429s (``AdaptiveLimiter``: a 429
pauses every request of this object for Retry-After, sustained 429s slow it down instead of failing it);
``rpm=`` / ``tpm=`` (and ``concurrency=``) keyword arguments hold it to given limits with the job's
``WorkerLimiter`` instead. Other keyword arguments are ``jina`` settings (``max_attempts``,
``retry_timeout``, ``read_timeout``...).

The calls are synchronous, yet the client is async. Rather than ``asyncio.run`` per call (which
fails inside a running loop — Jupyter — and would throw away the connection pool each time), the
facade owns a private event loop on a daemon thread; each call is submitted to it with
``run_coroutine_threadsafe`` and waited for. That works from plain scripts, from threads and from
inside someone else's event loop. ``close()`` (or the context manager, or garbage collection)
closes the client and stops the thread.
"""
from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import numpy as np

from ..config import JinaSettings
from ..errors import ConfigError
from .client import JinaClient
from .probe import PROBE_TEXT

__all__ = ["JinaEmbeddingFunction"]

T = TypeVar("T")


class _LoopThread:
    """An event loop running forever on a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="jinabatch-facade-loop", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError("JinaEmbeddingFunction cannot be called from its own event loop")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        if not self.thread.is_alive():
            self.loop.close()


def _shutdown(runner: _LoopThread, client: JinaClient) -> None:
    try:
        if not runner.loop.is_closed() and runner.thread.is_alive():
            runner.run(client.aclose())
    finally:
        runner.stop()


class JinaEmbeddingFunction:
    """Drop-in for ``pymilvus.model.dense.JinaEmbeddingFunction``; returns lists of float32 1-D arrays."""

    def __init__(self, model_name: str = "jina-embeddings-v3", api_key: str | None = None,
                 task: str | None = None, dimensions: int | None = None, late_chunking: bool = False,
                 *, base_url: str | None = None, **client_settings: Any):
        """``task`` None: the family's document task (``retrieval.passage`` for v3, pymilvus's default;
        ``nl2code.passage`` for the code models; none for models that take no task). ``settings``: a
        ``JinaSettings`` whose written values are kept (those not written stay unset: a model the table does not
        know gets only what was written)."""
        client_kw = {k: client_settings.pop(k) for k in ("limiter", "transport", "estimator", "rpm", "tpm")
                     if k in client_settings}
        base = client_settings.pop("settings", None)
        asked = {"task": task, "dimensions": dimensions, "late_chunking": late_chunking or None}
        values = {**(base.model_dump(exclude_unset=True) if base else {}), "model": model_name,
                  **{k: v for k, v in asked.items() if v is not None}, **client_settings}
        try:
            settings = JinaSettings.model_validate(values)
        except Exception as e:  # pydantic's message names the field
            raise ConfigError(f"JinaEmbeddingFunction: {e}") from None
        self._sides = settings.spec.sides(settings.embed_task)
        self.model_name = model_name
        self.task = settings.embed_task
        self.dimensions = dimensions
        self.late_chunking = late_chunking
        self._runner = _LoopThread()
        try:
            self._client = self._runner.run(self._make_client(settings, api_key, base_url, client_kw))
        except BaseException:
            self._runner.stop()
            raise
        self._dim: int | None = self._client.dim if dimensions is not None or not settings.spec.takes_dimensions else None
        self._finalizer = weakref.finalize(self, _shutdown, self._runner, self._client)

    @staticmethod
    async def _make_client(settings: JinaSettings, api_key: str | None, base_url: str | None,
                           kw: dict[str, Any]) -> JinaClient:
        return JinaClient(settings, api_key=api_key, base_url=base_url, **kw)

    # -- the pymilvus contract -------------------------------------------------------------------
    def encode_documents(self, documents: Sequence[str]) -> list[np.ndarray]:
        """Embeddings for documents at indexing time (the document side: ``retrieval.passage``...)."""
        return self._encode(documents, self._sides.document)

    def encode_queries(self, queries: Sequence[str]) -> list[np.ndarray]:
        """Embeddings for search queries (the query side: ``retrieval.query``, ``nl2code.query``...)."""
        return self._encode(queries, self._sides.query)

    def __call__(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Embeddings with the constructor's task."""
        return self._encode(texts, self.task)

    @property
    def dim(self) -> int:
        """The output dimension: known up front when ``dimensions`` is set, else one probe request (cached)."""
        if self._dim is None:
            self._dim = int(self._encode([PROBE_TEXT], self.task)[0].shape[0])
        return self._dim

    # -- lifecycle -------------------------------------------------------------------------------
    @property
    def client(self) -> JinaClient:
        return self._client

    @property
    def stats(self):
        return self._client.stats

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> "JinaEmbeddingFunction":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"JinaEmbeddingFunction(model_name={self.model_name!r}, task={self.task!r}, "
                f"dimensions={self.dimensions!r}, late_chunking={self.late_chunking!r}, api_key=***)")

    def __reduce__(self):
        raise TypeError("JinaEmbeddingFunction is not picklable (it holds the API key); build one per process")

    def _encode(self, texts: Sequence[str], task: str | None) -> list[np.ndarray]:
        if isinstance(texts, str):
            raise TypeError("pass a list of strings, not one string")
        if not self._finalizer.alive:
            raise RuntimeError("this JinaEmbeddingFunction is closed")
        vectors = self._runner.run(self._client.embed(list(texts), task=task))
        if self._dim is None and len(vectors):
            self._dim = int(vectors.shape[1])
        return list(vectors)

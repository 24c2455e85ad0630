"""Exceptions, as a tree so a caller catches at the level it cares about::

    JinaBatchError
    ├── ConfigError              a setting is missing or wrong (names the key)
    ├── CorpusError              input files: missing column, unreadable, not Parquet (names the file)
    ├── StorageError             a folder or object-store prefix can't be reached: no bucket, bad credentials,
    │                            endpoint down (names the URI, never a credential)
    ├── BadRowError              on_too_long = "fail" met a row (names id and file)
    ├── JinaError                the embeddings API (never carries the API key)
    │   ├── AuthError            401: missing or invalid key              — not retried
    │   ├── BillingError         402/403: balance / permission            — not retried
    │   ├── InvalidRequest       400/422: the request itself is wrong     — not retried
    │   ├── ResponseError        2xx with a wrong count, dims, non-finite values or bad body — not retried
    │   ├── BatchGone            404/410 for a batch id the job submitted: the service no longer knows it
    │   ├── TransientError       worth retrying
    │   │   ├── RateLimited      429 (retry_after seconds when the server gave one)
    │   │   ├── ServerError      5xx, JSON or HTML body
    │   │   └── TransportError   timeout, dropped connection, connect failure
    │   └── RetriesExhausted     the retry budget ran out (names the last cause and the attempts)
    └── LoadError                Milvus import / verification failed (carries Milvus's reason)

The Jina part of the tree is filled in by ``jinabatch.jina.client``; this module holds the classes. Every one
pickles with its message and attributes (``status``, ``retry_after``, ``attempts``...), so a shard task hands its
error to the driver as the error itself, across Ray.
"""
from __future__ import annotations

__all__ = [
    "JinaBatchError", "ConfigError", "CorpusError", "StorageError", "BadRowError", "LoadError",
    "JinaError", "AuthError", "BillingError", "InvalidRequest", "ResponseError", "BatchGone",
    "TransientError", "RateLimited", "ServerError", "TransportError", "RetriesExhausted",
]


def _restore(cls: type, args: tuple, state: dict) -> "JinaBatchError":
    e = cls.__new__(cls, *args)
    e.args = args
    e.__dict__.update(state)
    return e


class JinaBatchError(Exception):
    """Base of every error jinabatch raises on purpose."""

    def __reduce__(self):  # keyword-only attributes survive pickling (Exception's default passes args only)
        return (_restore, (type(self), self.args, self.__dict__))


class ConfigError(JinaBatchError):
    pass


class CorpusError(JinaBatchError):
    pass


class StorageError(JinaBatchError):
    pass


class BadRowError(JinaBatchError):
    pass


class LoadError(JinaBatchError):
    pass


class JinaError(JinaBatchError):
    """An error from the embeddings API. ``status`` is the HTTP status (None for transport errors)."""

    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(message)
        self.status = status


class AuthError(JinaError):
    pass


class BillingError(JinaError):
    pass


class InvalidRequest(JinaError):
    pass


class ResponseError(JinaError):
    pass


class BatchGone(JinaError):
    """The Batch Embeddings API no longer knows a batch id (404) or its output has expired (410): submit again."""


class TransientError(JinaError):
    pass


class RateLimited(TransientError):
    """``retry_after``: the server's wait in seconds, if it sent one; ``limit``: the limit its message names
    (``"rpm"``, ``"tpm"``, ``"concurrency"``), or None."""

    def __init__(self, message: str, *, status: int | None = 429, retry_after: float | None = None,
                 limit: str | None = None):
        super().__init__(message, status=status)
        self.retry_after = retry_after
        self.limit = limit


class ServerError(TransientError):
    pass


class TransportError(TransientError):
    pass


class RetriesExhausted(JinaError):
    def __init__(self, message: str, *, attempts: int, last: JinaError):
        super().__init__(message, status=last.status)
        self.attempts = attempts
        self.last = last

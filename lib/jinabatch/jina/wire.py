"""What goes over the wire: request bodies, response decoding, HTTP errors → ``jinabatch.errors``.

Pure functions, no I/O, so each is unit-tested on its own and the client stays a thin loop.

Decoding is vectorised: base64 rows are decoded and joined into one buffer that becomes a single
``(n, dim)`` float32 array with ``np.frombuffer`` — Python touches each row once, never each
element. JSON floats (``embedding_type="float"``) go through ``np.asarray`` once for the whole
response. Every response is checked before it is trusted: the indices are a permutation of
``0..n-1`` (rows are returned in ``index`` order, not body order), the count equals the inputs,
every row has the expected length, and float values are finite.
"""
from __future__ import annotations

import base64
import binascii
import email.utils
import html
import json
import re
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import (
    AuthError,
    BillingError,
    InvalidRequest,
    JinaError,
    RateLimited,
    ResponseError,
    ServerError,
)
from ..models import ModelSpec

__all__ = ["STAND_IN_HEADER", "build_body", "decode_response", "row_width", "error_for_status", "parse_retry_after", "limit_named",
           "cap_named", "short_text", "DTYPES"]

# The bundled local stand-in for the API answers with this header, so a client can tell its deterministic
# vectors from a real model's.
STAND_IN_HEADER = "X-Jinabatch-Stand-In"
DTYPES = {"float": np.float32, "base64": np.float32, "binary": np.int8, "ubinary": np.uint8}


def build_body(spec: ModelSpec, texts: Sequence[str], *, embedding_type: str, task: str | None,
               dimensions: int | None, late_chunking: bool, normalized: bool, truncate: bool,
               fields: frozenset[str] | None = None) -> dict[str, Any]:
    """The JSON body: Jina's field names, only the optional ``fields`` (default: those ``spec`` accepts; a config's
    ``JinaSettings.request_fields``), no ``None`` values."""
    body = {"embedding_type": embedding_type, "task": task, "dimensions": dimensions, "late_chunking": late_chunking,
            "normalized": normalized, "truncate": truncate}
    accepted = spec.fields if fields is None else fields
    return {"model": spec.name, "input": list(texts),
            **{k: v for k, v in body.items() if k in accepted and v is not None}}


def row_width(embedding_type: str, dim: int) -> int:
    """Elements per row on the wire: ``dim`` floats, or ``dim / 8`` packed bytes for binary types."""
    return dim // 8 if embedding_type in ("binary", "ubinary") else dim


def _fail(msg: str) -> ResponseError:
    return ResponseError(f"Jina API returned a malformed response: {msg}. Not retried; if it persists, "
                         "check jina.base_url points at a Jina-compatible server", status=200)


def decode_response(content: bytes, *, n_inputs: int, embedding_type: str,
                    dim: int | None) -> tuple[np.ndarray, int | None]:
    """Decode a 2xx body into ``(vectors, total_tokens)``; vectors are ``(n_inputs, width)``.

    ``dim`` is the expected output dimension, or None to accept any width as long as every row
    agrees. Raises :class:`ResponseError` on anything off.
    """
    try:
        doc = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        raise _fail(f"body is not JSON ({short_text(content)!r})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise _fail("no 'data' list in the body")
    data = doc["data"]
    if len(data) != n_inputs:
        raise _fail(f"{len(data)} embeddings for {n_inputs} inputs")
    try:
        idx = np.fromiter((d["index"] for d in data), dtype=np.int64, count=len(data))
        rows = [d["embedding"] for d in data]
    except (KeyError, TypeError, ValueError):
        raise _fail("an item of 'data' lacks an integer 'index' or an 'embedding'") from None
    order = np.argsort(idx, kind="stable")
    if n_inputs and not np.array_equal(idx[order], np.arange(n_inputs)):
        raise _fail(f"indices are not 0..{n_inputs - 1} exactly once")
    rows = [rows[i] for i in order]
    width = row_width(embedding_type, dim) if dim is not None else None
    vectors = _decode_rows(rows, embedding_type, width)
    if vectors.dtype == np.float32 and not np.isfinite(vectors).all():
        bad = int(np.flatnonzero(~np.isfinite(vectors).all(axis=1))[0])
        raise _fail(f"non-finite values (NaN/inf) in the embedding of input {bad}")
    usage = doc.get("usage") or {}
    tokens = usage.get("total_tokens") if isinstance(usage, dict) else None
    return vectors, tokens if isinstance(tokens, int) else None


def _check_widths(lengths: list[int], width: int | None, unit: str) -> int:
    if not lengths:
        return width or 0
    want = width if width is not None else lengths[0]
    for i, n in enumerate(lengths):
        if n != want:
            raise _fail(f"the embedding of input {i} has {n} {unit}; expected {want}")
    return want


def _decode_rows(rows: list[Any], embedding_type: str, width: int | None) -> np.ndarray:
    dtype = DTYPES.get(embedding_type)
    if dtype is None:
        raise ValueError(f"unknown embedding_type {embedding_type!r}")
    if embedding_type == "base64":
        try:
            raw = [base64.b64decode(r, validate=True) for r in rows]
        except (binascii.Error, TypeError, ValueError):
            raise _fail("an embedding is not a base64 string") from None
        lengths = [len(b) for b in raw]
        if any(n % 4 for n in lengths):
            raise _fail("a base64 embedding is not a whole number of float32 values")
        w = _check_widths([n // 4 for n in lengths], width, "values")
        return np.frombuffer(b"".join(raw), dtype="<f4").astype(np.float32, copy=False).reshape(len(rows), w)
    if not all(isinstance(r, list) for r in rows):
        raise _fail(f"embedding_type {embedding_type!r} expects lists of numbers")
    w = _check_widths([len(r) for r in rows], width, "values")
    try:
        if embedding_type == "float":
            return np.asarray(rows, dtype=np.float32).reshape(len(rows), w)
        arr = np.asarray(rows, dtype=np.int64).reshape(len(rows), w)
    except (TypeError, ValueError):
        raise _fail("an embedding holds something other than numbers") from None
    info = np.iinfo(dtype)
    if arr.size and (arr.min() < info.min or arr.max() > info.max):
        raise _fail(f"{embedding_type} values out of the {np.dtype(dtype).name} range")
    return arr.astype(dtype)


_TAG = re.compile(r"<(script|style)\b.*?</\1>|<[^>]+>", re.S | re.I)
_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.S | re.I)


def short_text(content: bytes | str, limit: int = 200) -> str:
    """A one-line excerpt of a body: a JSON ``detail``, an HTML page's title (or its text), or raw text."""
    text = content.decode("utf-8", "replace") if isinstance(content, bytes) else content
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            doc = json.loads(stripped)
        except ValueError:
            doc = None
        if isinstance(doc, dict) and "detail" in doc:
            text = _detail_text(doc["detail"])
        elif isinstance(doc, dict) and isinstance(doc.get("error"), (str, dict)):
            err = doc["error"]
            text = err if isinstance(err, str) else str(err.get("message", err))
    elif stripped[:1] == "<":
        m = _TITLE.search(stripped)
        text = html.unescape(m.group(1) if m else _TAG.sub(" ", stripped))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _detail_text(detail: Any) -> str:
    if isinstance(detail, list):  # FastAPI-style validation errors
        parts = []
        for d in detail:
            if isinstance(d, dict):
                loc = ".".join(str(p) for p in d.get("loc", ()) if p != "body")
                parts.append(f"{loc}: {d.get('msg', d)}" if loc else str(d.get("msg", d)))
            else:
                parts.append(str(d))
        return "; ".join(parts)
    return str(detail)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP-date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        secs = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        secs = when.timestamp() - (time.time() if now is None else now)
    if secs != secs:  # NaN
        return None
    return max(0.0, secs)


def limit_named(detail: str) -> str | None:
    """Which limit a 429's message names: "concurrency", "tpm", "rpm", or None when it names none."""
    d = detail.lower()
    if "concurren" in d or "in flight" in d or "parallel" in d:
        return "concurrency"
    if "token" in d or "tpm" in d:
        return "tpm"
    if "request" in d or "rpm" in d:
        return "rpm"
    return None


_NUMBER = re.compile(r"(?<![\w.\[-])\d[\d,_]*(?![\w.\]-])")  # a figure on its own: not v5, 0.5b, input[3]
_CAP_WORDS = ("too many", "at most", "limit", "maximum", "max ", "exceed", "per request", "items", "batch")


def cap_named(detail: str, model: str, *, inputs: int) -> tuple[str, int] | None:
    """The request cap a 400/422 names, as ("inputs", n) — inputs per request —, ("tokens", n) — tokens of one
    request —, ("context", n) — tokens of one late-chunking request, the model's context —, or None when it names
    none (a bad input, an unknown field).

    ``inputs`` is how many the refused request held: the cap is the largest figure the message gives below it
    (``600 inputs, over the limit of 512``, ``at most 2048 items, not 3000``), else half of it."""
    d = detail.lower().replace(model.lower(), "")
    if "input" not in d or not any(w in d for w in _CAP_WORDS):
        return None
    figures = [int(m.group().replace(",", "").replace("_", "")) for m in _NUMBER.finditer(d)]
    if "token" in d:  # a request-wide token cap ("in total", "one request"); a per-input one cannot be cut
        if not any(w in d for w in ("in total", "request", "batch", "sum")) or not figures:
            return None
        return ("context" if "late" in d else "tokens"), min(figures)
    if inputs < 2:
        return None
    below = [f for f in figures if 0 < f < inputs]
    return "inputs", max(below) if below else inputs // 2


def error_for_status(status: int, content: bytes, headers: Any, *, model: str, key_env: str) -> JinaError:
    """The typed error for a non-2xx response; the message names the cause and what to do."""
    detail = short_text(content) or "(empty body)"
    if status == 401:
        return AuthError(f"Jina API rejected the API key (401: {detail}). Check the key in ${key_env} "
                         "(or JINA_API_KEY); get one at https://jina.ai/embeddings", status=status)
    if status in (402, 403):
        return BillingError(f"Jina API refused the request ({status}: {detail}). Top up the key's balance "
                            "or use a key with access to this model", status=status)
    if status == 429:
        ra = parse_retry_after(headers.get("retry-after"))
        wait = f"; retry after {ra:g}s" if ra is not None else ""
        return RateLimited(f"Jina API rate limit hit (429: {detail}){wait}. Lower limits.rpm / limits.tpm / "
                           "limits.concurrency if this is frequent", retry_after=ra, limit=limit_named(detail))
    if status >= 500 or status == 408:
        return ServerError(f"Jina API server error ({status}: {detail})", status=status)
    if status == 404:
        return InvalidRequest(f"Jina API endpoint not found (404: {detail}). Check jina.base_url "
                              "(it should end in /v1)", status=status)
    return InvalidRequest(f"Jina API rejected the request for {model} ({status}: {detail}). Not retried; "
                          "check jina.model / task / dimensions and the input texts", status=status)

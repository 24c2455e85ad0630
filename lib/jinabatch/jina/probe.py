"""Fail fast: one tiny request per key before a job schedules anything.

``check_endpoint(settings, base_url, keys)`` sends the request the job would send — same model, task,
dimensions, embedding type — for one short text, once per key, and raises a one-line error naming the URL
and the cause when the answer is not an embedding: the host does not resolve or refuses connections
(``TransportError``), the path is wrong (``InvalidRequest``: 404), the key is refused (``AuthError``, naming
the key as ``key0 ($VARIABLE)``, never its value), the balance is gone (``BillingError``), the request is
refused (``InvalidRequest``: 400/422, e.g. a model that takes no ``dimensions``; a model name the API does not
know, when the model table does not know it either, is named as such with the closest known names). A 429 passes:
the endpoint and key work, the budget is just busy — unless the job needs the answer's width (a model whose width
is neither configured nor published), then it waits for the ``Retry-After`` and asks again. A 5xx or a timeout is
tried once more after a second.

The answer is read: the vector's length is the width the model gives (``"dim"``), which is how a job learns the
width of a model Jina publishes none for, and a width other than the configured or published one fails here
(``ResponseError``) instead of in every shard.

Timeouts are short (``jina.connect_timeout`` and ``jina.read_timeout``, at most 10 s and 30 s), so a dead
network or a typo costs seconds, not a cluster's worth of retries.
"""
from __future__ import annotations

import time
from collections.abc import Sequence

import httpx

from ..config import JinaSettings
from ..errors import ConfigError, InvalidRequest, JinaError, RateLimited, ResponseError, ServerError, TransportError
from ..models import MODELS, close_models
from .keys import KeyPool, Secret
from .wire import STAND_IN_HEADER, build_body, decode_response, error_for_status, short_text

__all__ = ["check_endpoint", "PROBE_TEXT"]

PROBE_TEXT = "dimension probe"  # what the facade's dim probe sends too
BUSY_TRIES = 5  # 429s in a row a check that needs the answer's width waits out
BUSY_WAIT_MAX = 30.0  # seconds, at most, per wait


def _cause(e: httpx.TransportError) -> str:
    text = str(e) or type(e).__name__
    low = text.lower()
    if isinstance(e, httpx.ConnectError) and ("name or service" in low or "nodename" in low or "resolution" in low
                                              or "getaddrinfo" in low or "name resolution" in low):
        return f"the host name does not resolve ({text})"
    if isinstance(e, httpx.ConnectTimeout):
        return f"no connection within the timeout ({text or 'ConnectTimeout'})"
    if isinstance(e, httpx.ConnectError):
        return f"cannot connect ({text})"
    if isinstance(e, httpx.TimeoutException):
        return f"no answer within the timeout ({type(e).__name__})"
    return f"{type(e).__name__}: {text}"


def check_endpoint(settings: JinaSettings, base_url: str,
                   keys: KeyPool | Secret | Sequence[Secret]) -> list[dict[str, int]]:
    """One request of one short text per key; raises unless each is answered (or 429).

    Returns what each key spent on it (``{"tokens", "requests"}``, in key order), for the job's report, whether
    the local stand-in answered (``"stand_in"``: its responses carry ``X-Jinabatch-Stand-In``) and the width of
    the vector it answered with (``"dim"``; None after a 429)."""
    pool = [keys] if isinstance(keys, Secret) else list(keys)
    url = base_url.rstrip("/") + "/embeddings"
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"jina.base_url must be an http(s) URL ending in /v1; got {base_url!r}")
    body = build_body(settings.spec, [PROBE_TEXT], embedding_type=settings.embedding_type, task=settings.embed_task,
                      dimensions=settings.dimensions, late_chunking=settings.late_chunking,
                      normalized=settings.normalized, truncate=settings.on_too_long == "truncate",
                      fields=settings.request_fields)
    timeout = httpx.Timeout(connect=min(settings.connect_timeout, 10.0), read=min(settings.read_timeout, 30.0),
                            write=10.0, pool=10.0)
    spent: list[dict] = []
    with httpx.Client(timeout=timeout, headers={"Accept": "application/json", "User-Agent": "jinabatch"}) as http:
        for i, key in enumerate(pool):
            label = key.describe() if key.label else (f"key{i} (${key.name})" if key.name else f"key{i}")
            need_width = settings.dim is None and not any(p["dim"] for p in spent)
            spent.append(_check_key(http, url, body, key, settings, label=label, need_width=need_width))
    return spent


def _width(resp: httpx.Response, url: str, settings: JinaSettings) -> int:
    """The width of the answer's one vector; ResponseError if it is not an embedding or not the width expected."""
    try:
        vectors, _ = decode_response(resp.content, n_inputs=1, embedding_type=settings.wire_type, dim=None)
    except ResponseError as e:
        raise ResponseError(f"{url}: {e}", status=resp.status_code) from None
    dim = vectors.shape[1] * (8 if settings.wire_type in ("binary", "ubinary") else 1)
    want = settings.dim
    if want is not None and dim != want:
        why = "jina.dimensions" if settings.dimensions is not None else "the model table's width"
        raise ResponseError(f"{url} answered {dim}-dim vectors for {settings.model}, not {want} ({why}): the "
                            "vectors would not fit the collection; check jina.model and jina.dimensions",
                            status=resp.status_code)
    return dim


def _refused_model(status: int, content: bytes, url: str, settings: JinaSettings) -> InvalidRequest | None:
    """The one-line error for a model name the API refuses and the model table does not know either (a
    misspelling), else None."""
    detail = short_text(content)
    if settings.spec.known or status not in (400, 404, 422) or settings.model.lower() not in detail.lower():
        return None
    near = close_models(settings.model)
    hint = f"did you mean {' or '.join(map(repr, near))}?" if near else f"models it knows: {', '.join(sorted(MODELS))}"
    return InvalidRequest(f"{url} refused jina.model {settings.model!r} ({status}: {detail}); jinabatch's model table "
                          f"does not know it either — check the spelling ({hint})", status=status)


def _check_key(http: httpx.Client, url: str, body: dict, key: Secret, settings: JinaSettings, *,
               label: str, need_width: bool = False) -> dict:
    env = key.name or settings.api_key_env[0]
    busy = 0
    for attempt in range(1, 3 + BUSY_TRIES):
        try:
            resp = http.post(url, json=body, headers={"Authorization": f"Bearer {key.get()}"})
        except httpx.UnsupportedProtocol:
            raise ConfigError(f"jina.base_url {url.rsplit('/embeddings', 1)[0]!r} is not an http(s) URL") from None
        except httpx.TransportError as e:  # never chained: its request carries the key
            cause = _scrub(_cause(e), key)
            err: JinaError = TransportError(f"cannot reach {url}: {cause}; check jina.base_url and the network")
            if "does not resolve" in cause:  # DNS said no: asking again will not help
                raise err from None
        else:
            stand_in = STAND_IN_HEADER in resp.headers  # the local stand-in answered (its vectors are not the model's)
            if resp.status_code < 300:
                try:
                    tokens = int(resp.json()["usage"]["total_tokens"])
                except (ValueError, KeyError, TypeError):
                    tokens = 0
                return {"tokens": tokens, "requests": attempt, "stand_in": stand_in,
                        "dim": _width(resp, url, settings)}
            content = _scrub(resp.text, key).encode()
            if refused := _refused_model(resp.status_code, content, url, settings):
                raise refused from None
            err = error_for_status(resp.status_code, content, resp.headers, model=settings.model, key_env=env)
            if isinstance(err, RateLimited):  # reachable, key accepted, budget busy: good enough
                if not need_width:
                    return {"tokens": 0, "requests": attempt, "stand_in": stand_in, "dim": None}
                busy += 1
                if busy < BUSY_TRIES:  # the job needs this answer's width: wait the budget out and ask again
                    time.sleep(min(err.retry_after or float(busy), BUSY_WAIT_MAX))
                    continue
                raise RateLimited(f"{url} with {label} answered 429 {busy} times in a row: the width of "
                                  f"{settings.model} is known only from an answer; retry later, or set jina.dimensions",
                                  retry_after=err.retry_after, limit=err.limit) from None
            err = type(err)(f"{url} with {label}: {err}", status=err.status)
            if not isinstance(err, ServerError):
                raise err from None
        if attempt - busy >= 2:
            raise err from None
        time.sleep(1.0)
    raise AssertionError("unreachable")


def _scrub(text: str, key: Secret) -> str:
    value = key.get()
    return text.replace(value, "***") if value and value in text else text

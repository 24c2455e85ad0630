"""Fail fast: one tiny request per key before a job schedules anything.

``check_endpoint(settings, base_url, keys)`` sends the request the job would send — same model, task,
dimensions, embedding type — for one short text, once per key, and raises a one-line error naming the URL
and the cause when the answer is not an embedding: the host does not resolve or refuses connections
(``TransportError``), the path is wrong (``InvalidRequest``: 404), the key is refused (``AuthError``, naming
the key as ``key0 ($VARIABLE)``, never its value), the balance is gone (``BillingError``), the request is
refused (``InvalidRequest``: 400/422, e.g. a model that takes no ``dimensions``). A 429 passes: the endpoint
and key work, the budget is just busy. A 5xx or a timeout is tried once more after a second.

Timeouts are short (``jina.connect_timeout`` and ``jina.read_timeout``, at most 10 s and 30 s), so a dead
network or a typo costs seconds, not a cluster's worth of retries.
"""
from __future__ import annotations

import time
from collections.abc import Sequence

import httpx

from ..config import JinaSettings
from ..errors import ConfigError, JinaError, RateLimited, ServerError, TransportError
from .keys import KeyPool, Secret
from .wire import STAND_IN_HEADER, build_body, error_for_status

__all__ = ["check_endpoint", "PROBE_TEXT"]

PROBE_TEXT = "dimension probe"  # what the facade's dim probe sends too


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

    Returns what each key spent on it (``{"tokens", "requests"}``, in key order), for the job's report, and
    whether the local stand-in answered (``"stand_in"``: its responses carry ``X-Jinabatch-Stand-In``)."""
    pool = [keys] if isinstance(keys, Secret) else list(keys)
    url = base_url.rstrip("/") + "/embeddings"
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"jina.base_url must be an http(s) URL ending in /v1; got {base_url!r}")
    spec = settings.spec
    body = build_body(spec, [PROBE_TEXT], embedding_type=settings.embedding_type,
                      task=settings.task if spec.takes_task else None, dimensions=settings.dimensions,
                      late_chunking=settings.late_chunking, normalized=settings.normalized, truncate=settings.on_too_long == "truncate")
    timeout = httpx.Timeout(connect=min(settings.connect_timeout, 10.0), read=min(settings.read_timeout, 30.0),
                            write=10.0, pool=10.0)
    spent = []
    with httpx.Client(timeout=timeout, headers={"Accept": "application/json", "User-Agent": "jinabatch"}) as http:
        for i, key in enumerate(pool):
            label = key.describe() if key.label else (f"key{i} (${key.name})" if key.name else f"key{i}")
            spent.append(_check_key(http, url, body, key, settings, label=label))
    return spent


def _check_key(http: httpx.Client, url: str, body: dict, key: Secret, settings: JinaSettings, *,
               label: str) -> dict[str, int]:
    env = key.name or settings.api_key_env[0]
    for attempt in (1, 2):
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
            if resp.status_code < 300:
                try:
                    tokens = int(resp.json()["usage"]["total_tokens"])
                except (ValueError, KeyError, TypeError):
                    tokens = 0
                # stand_in: the local stand-in answered (its vectors are not the model's)
                return {"tokens": tokens, "requests": attempt, "stand_in": STAND_IN_HEADER in resp.headers}
            err = error_for_status(resp.status_code, _scrub(resp.text, key).encode(), resp.headers,
                                   model=settings.model, key_env=env)
            if isinstance(err, RateLimited):  # reachable, key accepted, budget busy: good enough
                return {"tokens": 0, "requests": attempt, "stand_in": STAND_IN_HEADER in resp.headers}
            err = type(err)(f"{url} with {label}: {err}", status=err.status)
            if not isinstance(err, ServerError):
                raise err from None
        if attempt == 2:
            raise err from None
        time.sleep(1.0)
    raise AssertionError("unreachable")


def _scrub(text: str, key: Secret) -> str:
    value = key.get()
    return text.replace(value, "***") if value and value in text else text

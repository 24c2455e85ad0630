"""Narrow unit tests of JinaClient with an in-process transport (httpx.MockTransport): the limiter
handshake, key handling and settings plumbing. The same behaviour over real HTTP is in
test_jina_client.py."""
import asyncio
import json
import pickle

import httpx
import numpy as np
import pytest

from jinabatch.local_api import fakemodel
from jinabatch.errors import AuthError, ConfigError, InvalidRequest, RetriesExhausted
from jinabatch.jina.client import JinaClient, Limiter, NoLimiter, Secret

KEY = "jina_unit_test_key_0123456789"
FAST = dict(retry_wait_initial=0.0, retry_wait_max=0.0, retry_wait_jitter=0.0)


class RecordingLimiter:
    def __init__(self):
        self.calls = []

    async def acquire(self, tokens):
        self.calls.append(("acquire", tokens))

    def release(self, tokens_estimated, tokens_used, *, rate_limited=False, retry_after=None, limit=None):
        self.calls.append(("release", tokens_estimated, tokens_used, rate_limited, retry_after, limit))


def _ok(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    vecs = fakemodel.embed(body["model"], body.get("task"), body.get("dimensions", 1024), body["input"])
    data = [{"object": "embedding", "index": i, "embedding": e}
            for i, e in enumerate(fakemodel.encode(vecs, body["embedding_type"]))]
    return httpx.Response(200, json={"data": data, "usage": {"total_tokens": 42}})


def _script(*responses):
    """A transport answering with the given callables/responses in turn; records requests."""
    seen = []

    def handler(request):
        seen.append(request)
        r = responses[min(len(seen) - 1, len(responses) - 1)]
        return r(request) if callable(r) else r

    return httpx.MockTransport(handler), seen


def run(coro):
    return asyncio.run(coro)


def test_no_limiter_satisfies_the_protocol():
    assert isinstance(NoLimiter(), Limiter) and isinstance(RecordingLimiter(), Limiter)


def test_every_attempt_acquires_and_releases_with_server_usage_and_429_info():
    transport, seen = _script(httpx.Response(429, json={"detail": "slow: 60 requests per minute"},
                                             headers={"Retry-After": "0"}), _ok)
    lim = RecordingLimiter()

    async def go():
        async with JinaClient(api_key=KEY, base_url="http://x/v1", transport=transport, limiter=lim,
                              dimensions=64, **FAST) as c:
            return await c.embed_batch(["a", "b"])

    res = run(go())
    assert res.attempts == 2 and res.tokens == 42 and len(seen) == 2
    est = res.estimated_tokens
    assert lim.calls == [("acquire", est), ("release", est, None, True, 0.0, "rpm"),
                         ("acquire", est), ("release", est, 42, False, None, None)]


def test_invalid_request_is_released_and_not_retried():
    transport, seen = _script(httpx.Response(422, json={"detail": "task: nope"}))
    lim = RecordingLimiter()

    async def go():
        async with JinaClient(api_key=KEY, base_url="http://x/v1", transport=transport, limiter=lim, **FAST) as c:
            await c.embed_batch(["a"])

    with pytest.raises(InvalidRequest, match="task: nope"):
        run(go())
    assert len(seen) == 1 and [c[0] for c in lim.calls] == ["acquire", "release"]


def test_key_goes_only_into_the_authorization_header():
    transport, seen = _script(_ok)

    async def go():
        async with JinaClient(api_key=KEY, base_url="http://x/v1", transport=transport, dimensions=32) as c:
            await c.embed_batch(["a"])
            return repr(c), c

    text, client = run(go())
    assert seen[0].headers["authorization"] == f"Bearer {KEY}"
    assert KEY not in seen[0].content.decode() and KEY not in text
    assert KEY not in repr(seen[0].headers)  # httpx masks it too
    with pytest.raises(TypeError, match="not picklable"):
        pickle.dumps(client)


def test_secret_prints_stars_and_refuses_pickle():
    s = Secret(KEY)
    assert repr(s) == str(s) == "***" and f"{s}" == "***"
    with pytest.raises(TypeError, match="not picklable"):
        pickle.dumps(s)


def test_missing_key_names_the_env_vars(monkeypatch):
    monkeypatch.delenv("JINAAI_API_KEY", raising=False)
    monkeypatch.delenv("JINA_API_KEY", raising=False)
    with pytest.raises(AuthError, match="JINAAI_API_KEY or JINA_API_KEY"):
        JinaClient(base_url="http://x/v1")


def test_key_from_fallback_env(monkeypatch):
    monkeypatch.delenv("JINAAI_API_KEY", raising=False)
    monkeypatch.setenv("JINA_API_KEY", KEY)
    transport, seen = _script(_ok)

    async def go():
        async with JinaClient(base_url="http://x/v1", transport=transport, dimensions=32) as c:
            await c.embed_batch(["a"])

    run(go())
    assert seen[0].headers["authorization"] == f"Bearer {KEY}"


def test_bad_overrides_and_local_base_url_are_config_errors():
    with pytest.raises(ConfigError, match="dimensions"):
        JinaClient(api_key=KEY, dimensions=7)
    with pytest.raises(ConfigError, match="LocalServer"):
        JinaClient(api_key=KEY, base_url="local")
    with pytest.raises(ConfigError, match="task 'nope'"):
        async def go():
            async with JinaClient(api_key=KEY, base_url="http://x/v1") as c:
                await c.embed_batch(["a"], task="nope")
        run(go())


def test_server_echoing_the_key_is_scrubbed():
    transport, _ = _script(httpx.Response(401, json={"detail": f"invalid key {KEY}"}))

    async def go():
        async with JinaClient(api_key=KEY, base_url="http://x/v1", transport=transport) as c:
            await c.embed_batch(["a"])

    with pytest.raises(AuthError) as ei:
        run(go())
    assert KEY not in str(ei.value) and "***" in str(ei.value)


def test_retries_exhausted_after_max_attempts():
    """A persistent 503 is tried jina.max_attempts times, then RetriesExhausted carries the cause."""
    transport, seen = _script(httpx.Response(503, text="busy"))

    async def go():
        async with JinaClient(api_key=KEY, base_url="http://x/v1", transport=transport, max_attempts=3,
                              **FAST) as c:
            await c.embed_batch(["a"])

    with pytest.raises(RetriesExhausted) as ei:
        run(go())
    assert len(seen) == 3 and ei.value.attempts == 3 and "ServerError" in str(ei.value)


def test_embed_returns_input_order_across_batches():
    transport, seen = _script(_ok)
    texts = [f"text number {i}" for i in range(10)]

    async def go():
        async with JinaClient(api_key=KEY, base_url="http://x/v1", transport=transport, dimensions=32,
                              max_inputs_per_request=3) as c:
            return await c.embed(texts, task="retrieval.query")

    got = run(go())
    assert len(seen) == 4
    want = fakemodel.embed("jina-embeddings-v3", "retrieval.query", 32, texts)
    np.testing.assert_array_equal(got, want)

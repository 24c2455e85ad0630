"""JinaClient over real HTTP against the local Jina-compatible server (jinabatch.local_api.server).

One server per module (thread mode, ~ms to start); each test sets the faults/limits it needs with
``configure`` and reads what the server saw from ``/stats``.
"""
import asyncio
import logging
import time

import numpy as np
import pytest

from jinabatch.local_api import fakemodel
from jinabatch.errors import (AuthError, InvalidRequest, RateLimited, ResponseError, RetriesExhausted,
                              ServerError, TransportError)
from jinabatch.jina.client import JinaClient, NoLimiter
from jinabatch.local_api.server import TRANSIENT_FAULTS, LocalServer, ServerSettings

KEY = "jina_client_test_key_5f3a9c0e7d1b"
V3 = "jina-embeddings-v3"
FAST = dict(retry_wait_initial=0.01, retry_wait_max=0.05, retry_wait_jitter=0.0)
DEFAULTS = dict(rpm=None, tpm=None, concurrency=None, burst_seconds=60.0, retry_after=True, latency_ms=0.0,
                fault_rate=0.0, fault_every=None, faults=list(TRANSIENT_FAULTS), stall_seconds=30.0, seed=0)
TEXTS = [f"Document {i}: the quick brown fox number {i * 37} jumps over lazy dogs." for i in range(12)]


@pytest.fixture(scope="module")
def server():
    with LocalServer(ServerSettings(api_keys=frozenset({KEY}))) as srv:
        yield srv


@pytest.fixture
def srv(server):
    server.configure(**DEFAULTS)
    server.reset_stats()
    yield server


def client(srv, **kw):
    kw = {"dimensions": 256, **FAST, **kw}
    return JinaClient(api_key=kw.pop("api_key", KEY), base_url=srv.url, **kw)


def run(coro):
    return asyncio.run(coro)


async def one_batch(srv, texts=TEXTS[:3], *, task=..., **kw):
    async with client(srv, **kw) as c:
        return await c.embed_batch(texts, task=task)


class TimedLimiter:
    """Records (event, monotonic time, args) for every acquire/release."""

    def __init__(self):
        self.events = []

    async def acquire(self, tokens):
        self.events.append(("acquire", time.monotonic(), tokens))

    def release(self, tokens_estimated, tokens_used, *, rate_limited=False, retry_after=None, limit=None):
        self.events.append(("release", time.monotonic(), (tokens_used, rate_limited, retry_after, limit)))


# -- values ------------------------------------------------------------------------------------
@pytest.mark.parametrize("etype", ["base64", "float", "binary", "ubinary"])
def test_every_embedding_type_decodes_to_fakemodels_values(srv, etype):
    res = run(one_batch(srv, embedding_type=etype))
    want = fakemodel.embed(V3, "retrieval.passage", 256, TEXTS[:3])
    if etype in ("base64", "float"):
        assert res.vectors.dtype == np.float32
        np.testing.assert_array_equal(res.vectors, want)
    else:
        assert res.vectors.dtype == (np.int8 if etype == "binary" else np.uint8) and res.vectors.shape == (3, 32)
        np.testing.assert_array_equal(res.vectors.view(np.uint8), np.packbits(want > 0, axis=1))
    assert res.tokens == sum(fakemodel.count_tokens(t) for t in TEXTS[:3]) and res.attempts == 1


def test_task_argument_overrides_the_settings_task(srv):
    res = run(one_batch(srv, task="retrieval.query"))
    np.testing.assert_array_equal(res.vectors, fakemodel.embed(V3, "retrieval.query", 256, TEXTS[:3]))


def test_v2_model_gets_only_its_fields_and_works(srv):
    """v2 takes no task/dimensions/late_chunking: the client leaves them out, so no 422."""
    res = run(one_batch(srv, model="jina-embeddings-v2-base-en", dimensions=None, task=None))
    np.testing.assert_array_equal(res.vectors, fakemodel.embed("jina-embeddings-v2-base-en", None, 768, TEXTS[:3]))
    assert srv.stats()["by_status"] == {"200": 1}


def test_late_chunking_is_sent_and_changes_the_vectors(srv):
    res = run(one_batch(srv, late_chunking=True))
    np.testing.assert_array_equal(
        res.vectors, fakemodel.embed(V3, "retrieval.passage", 256, TEXTS[:3], late_chunking=True))


def test_unset_dimensions_learns_the_width_from_the_server(srv):
    async def go():
        async with client(srv, dimensions=None) as c:
            assert c.dim is None
            await c.embed_batch(["x"])
            return c.dim

    assert run(go()) == 1024


def test_shuffled_data_is_put_back_in_index_order(srv):
    srv.configure(fault_every=1, faults=["shuffle"])
    res = run(one_batch(srv, texts=TEXTS))
    np.testing.assert_array_equal(res.vectors, fakemodel.embed(V3, "retrieval.passage", 256, TEXTS))
    assert srv.stats()["faults_by_kind"] == {"shuffle": 1}


# -- errors and retries ------------------------------------------------------------------------
@pytest.mark.parametrize("kind,match", [("wrong_count", "11 embeddings for 12 inputs"),
                                        ("wrong_dims", "has 128 values; expected 256"),
                                        ("nan", "non-finite")])
def test_bad_payloads_raise_response_error_without_retry(srv, kind, match):
    srv.configure(fault_every=1, faults=[kind])
    with pytest.raises(ResponseError, match=match):
        run(one_batch(srv, texts=TEXTS))
    assert srv.stats()["requests"] == 1


def test_bad_key_is_auth_error_not_retried(srv):
    with pytest.raises(AuthError, match="401.*JINAAI_API_KEY"):
        run(one_batch(srv, api_key="jina_wrong_key"))
    assert srv.stats()["requests"] == 1


def test_invalid_request_carries_the_detail_and_is_not_retried(srv):
    too_long = "word " * 9000  # > 8192 tokens, truncate off
    with pytest.raises(InvalidRequest, match=r"400: input\[0\]: \d+ tokens, over"):
        run(one_batch(srv, texts=[too_long]))
    assert srv.stats()["requests"] == 1


@pytest.mark.parametrize("kind,cls", [("json500", ServerError), ("html502", ServerError), ("drop", TransportError)])
def test_transient_faults_are_retried_until_success(srv, kind, cls):
    srv.configure(fault_every=2, faults=[kind])  # the 2nd request faults, the 3rd succeeds

    async def go():
        async with client(srv) as c:
            await c.embed_batch(TEXTS[:2])
            res = await c.embed_batch(TEXTS[2:4])
            return res, c.stats

    res, stats = run(go())
    np.testing.assert_array_equal(res.vectors, fakemodel.embed(V3, "retrieval.passage", 256, TEXTS[2:4]))
    assert res.attempts == 2 and stats.retries == 1 and stats.requests == 3
    assert stats.errors == {cls.__name__: 1}
    assert srv.stats()["requests"] == 3


def test_stall_hits_the_read_timeout_and_is_retried(srv):
    srv.configure(fault_every=1, faults=["stall"], stall_seconds=1.0)

    async def go():
        async with client(srv, read_timeout=0.3, max_attempts=2) as c:
            try:
                await c.embed_batch(["a"])
            finally:
                srv.configure(fault_every=None)

    with pytest.raises(RetriesExhausted) as ei:
        run(go())
    assert isinstance(ei.value.last, TransportError) and "ReadTimeout" in str(ei.value)
    assert ei.value.attempts == 2 and srv.stats()["requests"] == 2
    assert "jina.read_timeout=0.3s" in str(ei.value)


def test_retries_exhausted_names_the_cause_and_attempts(srv):
    srv.configure(fault_every=1, faults=["html502"])
    with pytest.raises(RetriesExhausted) as ei:
        run(one_batch(srv, max_attempts=3))
    e = ei.value
    assert e.attempts == 3 and isinstance(e.last, ServerError) and e.status == 502
    assert "all 3 attempts (jina.max_attempts)" in str(e) and "502 Bad Gateway" in str(e)
    assert "<html" not in str(e)
    assert srv.stats()["requests"] == 3


def test_retry_after_is_honoured(srv):
    """After a 429 with Retry-After, the next attempt waits at least that long."""
    srv.configure(rpm=60, burst_seconds=1.0)  # one request per second, bucket of one
    lim = TimedLimiter()

    async def go():
        async with client(srv, limiter=lim) as c:
            await c.embed_batch(["first"])
            return await c.embed_batch(["second"]), c.stats

    res, stats = run(go())
    limited = [i for i, e in enumerate(lim.events) if e[0] == "release" and e[2][1]]
    assert limited and stats.http_429 == len(limited) and res.attempts == 1 + len(limited)
    i = limited[0]
    retry_after = lim.events[i][2][2]
    assert retry_after >= 1.0
    assert lim.events[i + 1][0] == "acquire" and lim.events[i + 1][1] - lim.events[i][1] >= retry_after


def test_without_retry_after_429_uses_backoff(srv):
    srv.configure(rpm=60, burst_seconds=1.0, retry_after=False)
    lim = TimedLimiter()

    async def go():
        async with client(srv, limiter=lim, retry_wait_initial=0.2, retry_wait_max=1.0) as c:
            await c.embed_batch(["first"])
            return await c.embed_batch(["second"])

    res = run(go())
    limited = [e for e in lim.events if e[0] == "release" and e[2][1]]
    assert limited and all(e[2][2] is None for e in limited)  # no header → no retry_after
    assert res.attempts >= 2
    first = next(i for i, e in enumerate(lim.events) if e[0] == "release" and e[2][1])
    assert lim.events[first + 1][1] - lim.events[first][1] >= 0.2


def test_429s_do_not_count_against_max_attempts(srv):
    """max_attempts is for faults: with max_attempts=1 a request refused with 429 is still retried and succeeds."""
    srv.configure(rpm=60, burst_seconds=1.0, retry_after=True)

    async def go():
        async with client(srv, max_attempts=1) as c:
            await c.embed_batch(["a"])
            return await c.embed_batch(["b"]), c.stats

    res, stats = run(go())
    np.testing.assert_array_equal(res.vectors, fakemodel.embed(V3, "retrieval.passage", 256, ["b"]))
    assert stats.http_429 >= 1 and res.attempts == 1 + stats.http_429


def test_429s_past_retry_timeout_raise_retries_exhausted_naming_the_setting(srv):
    """Sustained 429s end only when jina.retry_timeout runs out; the error names it and the typed last 429."""
    srv.configure(rpm=1, burst_seconds=60.0, retry_after=True)  # one request a minute

    async def go():
        async with client(srv, retry_timeout=1.5, retry_after_max=0.2, limiter=NoLimiter()) as c:
            await c.embed_batch(["a"])
            await c.embed_batch(["b"])

    with pytest.raises(RetriesExhausted) as ei:
        run(go())
    e = ei.value
    assert isinstance(e.last, RateLimited) and e.last.retry_after >= 1 and e.last.limit == "rpm"
    assert "jina.retry_timeout" in str(e) and "429" in str(e)


def test_faults_still_count_against_max_attempts_between_429s(srv):
    """Every request faults (502): max_attempts=3 ends it after three attempts, whatever the time budget."""
    srv.configure(fault_every=1, faults=["html502"])
    with pytest.raises(RetriesExhausted, match="all 3 attempts"):
        run(one_batch(srv, max_attempts=3, retry_timeout=600))
    assert srv.stats()["requests"] == 3


# -- packing and calibration -------------------------------------------------------------------
def test_embed_packs_by_input_cap_and_keeps_order(srv):
    async def go():
        async with client(srv, max_inputs_per_request=5, concurrency=2) as c:
            return await c.embed(TEXTS), c.stats

    vecs, stats = run(go())
    np.testing.assert_array_equal(vecs, fakemodel.embed(V3, "retrieval.passage", 256, TEXTS))
    st = srv.stats()
    assert st["requests"] == 3 == stats.requests and st["inputs"] == 12


def test_embed_packs_by_token_budget(srv):
    async def go():
        async with client(srv, max_tokens_per_request=60) as c:
            plan = c.plan_batches(TEXTS)
            return plan, await c.embed(TEXTS)

    plan, vecs = run(go())
    assert len(plan) > 1 and all(len(g) < 12 for g in plan)
    assert srv.stats()["requests"] == len(plan)
    np.testing.assert_array_equal(vecs, fakemodel.embed(V3, "retrieval.passage", 256, TEXTS))


def test_late_chunking_caps_a_request_at_the_models_context(srv):
    async def go():
        async with client(srv, late_chunking=True, max_tokens_per_request=60_000) as c:
            return c.max_tokens(), c.max_tokens(late_chunking=False)

    assert run(go()) == (8192, 60_000)


def test_calibration_converges_to_the_servers_token_count(srv):
    corpus = [f"Record {i}; supplier=ACME-{i % 17}, notes: shipped {i * 3} crates of widgets to warehouse {i % 5}."
              for i in range(500)]

    async def go():
        async with client(srv, max_inputs_per_request=40) as c:
            await c.embed(corpus[:400])
            return c.estimator

    est = run(go())
    truth = sum(fakemodel.count_tokens(t) for t in corpus[400:])
    assert est.observations == 10
    assert est.estimate(corpus[400:]) == pytest.approx(truth, rel=0.03)


# -- the key -----------------------------------------------------------------------------------
def test_missing_key_fails_before_any_request(srv, monkeypatch):
    monkeypatch.delenv("JINAAI_API_KEY", raising=False)
    monkeypatch.delenv("JINA_API_KEY", raising=False)
    with pytest.raises(AuthError, match="JINAAI_API_KEY"):
        JinaClient(base_url=srv.url)
    assert srv.stats()["requests"] == 0


def test_key_never_reaches_logs_messages_or_reprs(srv, caplog):
    caplog.set_level(logging.DEBUG)  # root: jinabatch.jina, httpx, httpcore, stamina
    texts = []

    async def go():
        async with client(srv, max_attempts=2) as c:
            texts.append(repr(c))
            await c.embed_batch(["ok"])
            srv.configure(fault_every=1, faults=["json500"])
            try:
                await c.embed_batch(["fails"])
            except RetriesExhausted as e:
                texts.extend([str(e), repr(e), str(e.last), repr(e.last)])
            texts.append(repr(c.stats))

    run(go())
    assert any("jinabatch.jina" == r.name for r in caplog.records)
    assert any(r.name.startswith(("httpx", "httpcore")) for r in caplog.records)
    assert KEY not in caplog.text and all(KEY not in t for t in texts)


def test_a_row_past_the_cap_sent_with_truncate_reserves_the_cap_and_leaves_the_calibration_alone(srv):
    """The server bills a truncated input at the model's cap (8,192) however long it is. The request must
    reserve no more than that (a ~60,000-token reservation would hold the key's budget for seconds, then hand
    the surplus back in one burst), and its bill must not pull the ratio down (which would under-estimate
    every request after it)."""
    limiter = TimedLimiter()
    huge = "calibration " * 20_000  # ~60,000 tokens by bytes / 4; 40,000 by the server's count before the cap

    async def go():
        async with client(srv, limiter=limiter) as c:
            await c.embed_batch(TEXTS[:6])
            ratio = c.estimator.ratio
            res = await c.embed_batch([huge], truncate=True)
            return ratio, c.estimator.ratio, res

    before, after, res = run(go())
    assert res.tokens == 8192 and res.estimated_tokens == 8192
    assert [a for e, _, a in limiter.events if e == "acquire"][-1] == 8192
    assert after == before
    np.testing.assert_array_equal(res.vectors[0], fakemodel.expected(V3, "retrieval.passage", 256,
                                                                      fakemodel.truncate_text(huge, 8192)))

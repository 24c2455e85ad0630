"""A client nobody gave limits to paces itself: the issue-11 regime over real HTTP, and the learning rules.

The regime: a server enforcing 600 RPM / 300k TPM / 4 concurrent with buckets holding 2 seconds of budget,
429 with ``Retry-After``, 5% of admitted requests faulting (JSON 500, HTML 502, dropped connection, 5 s stall),
1,500 texts of up to 4,000 characters (lengths log-uniform from 100, ~380k tokens: over a minute of the
key's TPM). Before issue 11 the facade raised RetriesExhausted after 8 attempts there.
"""
import asyncio
import logging
import math
import random
import threading

import numpy as np
import pytest

from jinabatch.jina.client import JinaClient
from jinabatch.jina.facade import JinaEmbeddingFunction
from jinabatch.jina.limits import WorkerLimiter
from jinabatch.jina.pacing import AdaptiveLimiter
from jinabatch.local_api import fakemodel
from jinabatch.local_api.samples import make_texts
from jinabatch.local_api.server import LocalServer, ServerSettings

KEY = "jina_pacing_test_key_0c4d1e9a77b2"
V3, DIMS = "jina-embeddings-v3", 64
REGIME = dict(rpm=600, tpm=300_000, concurrency=4, burst_seconds=2.0, retry_after=True, fault_rate=0.05,
              faults=("json500", "html502", "drop", "stall"), stall_seconds=5.0, seed=11)


def long_texts(n: int = 1500, seed: int = 11) -> list[str]:
    rng = random.Random(seed)
    base = " ".join(make_texts(400, 3)[0])
    out = []
    for i in range(n):
        size = int(math.exp(rng.uniform(math.log(100), math.log(4000))))
        start = rng.randrange(0, len(base) - size)
        out.append(f"{i}: " + base[start:start + size])
    return out


# -- the regime, over real HTTP ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def under_pressure():
    """The facade and JinaClient.embed, each against its own server in the regime, at the same time."""
    texts = long_texts()
    out: dict = {}
    with LocalServer(ServerSettings(api_keys=frozenset({KEY}), **REGIME), mode="process") as a, \
            LocalServer(ServerSettings(api_keys=frozenset({KEY}), **REGIME), mode="process") as b:

        def facade() -> None:
            with JinaEmbeddingFunction(api_key=KEY, base_url=a.url, dimensions=DIMS) as ef:
                try:
                    out["facade"] = (ef.encode_documents(texts), ef.stats, None)
                except Exception as e:  # noqa: BLE001 - the test reports it
                    out["facade"] = (None, ef.stats, e)
            out["facade_server"] = a.stats()

        def client() -> None:
            async def go():
                async with JinaClient(api_key=KEY, base_url=b.url, dimensions=DIMS) as c:
                    try:
                        return await c.embed(texts), c.stats, None
                    except Exception as e:  # noqa: BLE001
                        return None, c.stats, e
            out["client"] = asyncio.run(go())
            out["client_server"] = b.stats()

        threads = [threading.Thread(target=facade), threading.Thread(target=client)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    out["texts"] = texts
    return out


def _check(out: dict, which: str) -> None:
    vectors, stats, error = out[which]
    st = out[f"{which}_server"]
    assert error is None, f"{which} raised {type(error).__name__}: {error}"
    want = fakemodel.embed(V3, "retrieval.passage", DIMS, out["texts"])
    got = np.stack(vectors) if isinstance(vectors, list) else vectors
    np.testing.assert_array_equal(got, want)  # every vector, in order, exact
    assert st["faults"] >= 5 and st["tokens"] >= sum(fakemodel.count_tokens(t) for t in out["texts"])
    assert st["http_429"] <= 0.05 * st["requests"], f"{st['http_429']} of {st['requests']} requests answered 429"
    assert stats.http_429 == st["http_429"]


@pytest.mark.slow
def test_facade_under_sustained_429s_and_faults_returns_every_vector_exactly(under_pressure):
    """encode_documents over 1,500 long texts in the regime: no exception, exact vectors, 429s ≤ 5% of requests."""
    _check(under_pressure, "facade")


@pytest.mark.slow
def test_client_embed_under_sustained_429s_and_faults_returns_every_vector_exactly(under_pressure):
    """The same through JinaClient.embed directly."""
    _check(under_pressure, "client")


@pytest.mark.slow
def test_explicit_limits_use_the_jobs_worker_limiter_and_stay_under_them(make_jina_server):
    """rpm=/tpm= on the facade: a WorkerLimiter at those rates, so a server enforcing them never says 429."""
    srv = make_jina_server(api_keys=frozenset({KEY}), rpm=600, tpm=120_000, concurrency=4, burst_seconds=2.0)
    texts = long_texts(150)
    with JinaEmbeddingFunction(api_key=KEY, base_url=srv.url, dimensions=DIMS, rpm=600, tpm=120_000) as ef:
        assert isinstance(ef.client.limiter, WorkerLimiter) and not isinstance(ef.client.limiter, AdaptiveLimiter)
        got = ef.encode_documents(texts)
    np.testing.assert_array_equal(np.stack(got), fakemodel.embed(V3, "retrieval.passage", DIMS, texts))
    assert srv.stats()["http_429"] == 0


def test_a_refused_request_bigger_than_the_learnt_budget_is_split(make_jina_server, caplog):
    """A 6k-token first request drains a 2k-token bucket; after the 429s the learnt request size is far below
    the refused requests, so they are split in halves — and every vector still comes back in order."""
    caplog.set_level(logging.INFO, logger="jinabatch.jina")
    srv = make_jina_server(api_keys=frozenset({KEY}), tpm=60_000, burst_seconds=2.0)
    texts = long_texts(60, seed=5)

    async def go():
        async with JinaClient(api_key=KEY, base_url=srv.url, dimensions=DIMS, max_tokens_per_request=6000,
                              retry_wait_initial=0.05, retry_wait_jitter=0.0) as c:
            return await c.embed(texts), c.limiter

    vectors, limiter = asyncio.run(go())
    np.testing.assert_array_equal(vectors, fakemodel.embed(V3, "retrieval.passage", DIMS, texts))
    assert "splitting a request" in caplog.text
    assert limiter.tpm is not None and limiter.request_tokens() < 6000


# -- the learning rules, on a fake clock -------------------------------------------------------------

class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def _send(lim: AdaptiveLimiter, tokens: int, *, used: int | None = None, **released) -> None:
    asyncio.run(lim.acquire(tokens))
    lim.release(tokens, used if used is not None or released else tokens, **released)


def test_before_any_429_the_client_is_unpaced_with_the_starting_request_size():
    lim = AdaptiveLimiter(concurrency=4, start_request_tokens=8192, clock=Clock())
    assert lim.tpm is None and lim.rpm is None and lim.request_tokens() == 8192


def test_a_429_pauses_every_request_for_retry_after():
    clock = Clock()
    lim = AdaptiveLimiter(clock=clock)
    _send(lim, 1000)
    asyncio.run(lim.acquire(100))
    lim.release(100, None, rate_limited=True, retry_after=3.0)
    assert lim._paused_until == pytest.approx(clock.t + 3.0)  # the whole client waits, not only that request

    async def another_request_waits():
        task = asyncio.ensure_future(lim.acquire(10))
        await asyncio.sleep(0.05)
        waiting = not task.done()
        clock.t += 3.0 + lim._tokens.wait_time(10) + 0.01
        await asyncio.wait_for(task, 5)
        return waiting

    assert asyncio.run(another_request_waits())


def test_429_without_retry_after_backs_off_doubling():
    clock = Clock()
    lim = AdaptiveLimiter(clock=clock)
    for want in (0.5, 1.0, 2.0):
        asyncio.run(lim.acquire(10))
        lim.release(10, None, rate_limited=True)
        assert lim._paused_until - clock.t == pytest.approx(want)
        clock.t = lim._paused_until + 10  # the pause is over; the learnt pace has refilled its bucket


def test_the_first_429_paces_below_what_got_through_then_request_size_follows():
    clock = Clock()
    lim = AdaptiveLimiter(clock=clock, decrease=0.85, request_seconds=0.5)
    for _ in range(10):  # 10 × 1000 tokens in 2 s got through
        _send(lim, 1000)
        clock.t += 0.2
    asyncio.run(lim.acquire(1000))
    lim.release(1000, None, rate_limited=True, retry_after=1.0, limit="tpm")
    assert lim.tpm == pytest.approx(0.85 * 10_000 / 2 * 60, rel=0.01) and lim.rpm is None  # only TPM was named
    assert lim.request_tokens() == pytest.approx(lim.tpm / 60 * 0.5, abs=1)


def test_later_429s_cut_to_what_the_server_let_through_and_set_the_ceiling():
    clock = Clock()
    lim = AdaptiveLimiter(clock=clock, decrease=0.85)
    _send(lim, 1000)
    clock.t += 0.5
    asyncio.run(lim.acquire(1000))
    lim.release(1000, None, rate_limited=True, retry_after=1.0, limit="tpm")  # the first cut
    first = clock.t
    lim.tpm = 1e9  # pretend the first estimate overshot a lot; the next 429 must correct it
    lim._apply()
    clock.t += 1.0  # Retry-After
    for _ in range(40):  # 40 × 500 tokens over 4 s went through: the server admits 5,000 tokens a second
        clock.t += 0.1
        _send(lim, 500)
    clock.t += 0.1
    asyncio.run(lim.acquire(500))
    lim.release(500, None, rate_limited=True, retry_after=1.0, limit="tpm")
    assert lim.ceiling["tpm"] == pytest.approx(20_000 / (clock.t - first) * 60, rel=0.01)
    assert lim.tpm == pytest.approx(0.85 * lim.ceiling["tpm"], rel=0.01)


def test_quiet_seconds_raise_the_pace_fast_below_the_plateau_and_slowly_above():
    clock = Clock()
    lim = AdaptiveLimiter(clock=clock, increase_per_s=0.02, plateau=0.95)
    lim.tpm, lim.ceiling["tpm"] = 60_000.0, 100_000.0
    lim._apply()
    clock.t += 10
    lim._recover()
    assert lim.tpm == pytest.approx(80_000)  # +2% of the ceiling a second
    lim.tpm = 96_000.0
    clock.t += 10
    lim._recover()
    assert lim.tpm == pytest.approx(98_000)  # above the plateau: a tenth as fast


def test_a_concurrency_429_lowers_the_cap_to_one_less_than_was_in_flight_and_it_grows_back():
    clock = Clock()
    lim = AdaptiveLimiter(clock=clock, concurrency=4, concurrency_recovery_s=20)
    for _ in range(3):
        asyncio.run(lim.acquire(10))
    lim.release(10, None, rate_limited=True, retry_after=1.0, limit="concurrency")
    assert lim.share.concurrency == 2 and lim.tpm is None  # rates untouched
    clock.t += 21
    lim._recover()
    assert lim.share.concurrency == 3

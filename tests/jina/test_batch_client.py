"""BatchClient against the local stand-in over HTTP: submit/wait/output/errors/cancel, matching by custom_id,
unknown ids counted, a broken download fetched again from scratch, 404 → BatchGone, submits through the limiter."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from jinabatch.config import parse_config
from jinabatch.errors import AuthError, BatchGone, BillingError
from jinabatch.jina.batch import BatchClient, BatchOutput, read_line
from jinabatch.jina.keys import Secret
from jinabatch.jina.limits import explicit_limiter
from jinabatch.local_api import fakemodel

NANO = "jina-embeddings-v5-text-nano"
FAST = {"poll_initial": 0.02, "poll_max": 0.1}


def _settings(**jina):
    return parse_config({"jina": {"api": "batch", "model": NANO, "batch": FAST, **jina}}).jina


def _run(srv, key, fn, **jina):
    async def main():
        async with BatchClient(_settings(**jina), api_key=Secret(key), base_url=srv.url) as c:
            return await fn(c)
    return asyncio.run(main())


def test_a_batch_round_trip_gives_the_exact_vectors_matched_by_custom_id(make_jina_server, jina_key):
    srv = make_jina_server(batch_queue_s=0.05, batch_processing_s=0.1, batch_item_fail_marker="XX",
                           batch_unknown_custom_id=True)
    texts = [f"row {i} text" for i in range(300)] + ["an XX item"]

    async def go(c):
        sub = await c.submit(texts)
        st = await c.wait(sub.batch_id, sub.key)
        out = await c.output(sub.batch_id, sub.key, len(texts), 768)
        return st, out, await c.errors(sub.batch_id, sub.key, len(texts))
    st, out, errs = _run(srv, jina_key, go)
    assert st.status == "completed" and st.total == 301 and st.failed == 1
    want = fakemodel.embed(NANO, "retrieval.passage", 768, texts[:300])
    assert out.ok[:300].all() and not out.ok[300]
    np.testing.assert_array_equal(out.vectors[:300], want)  # shuffled lines, rows in input order, exact float32
    assert list(out.failed) == [300] and "400" in out.failed[300] and list(errs) == [300]
    assert out.unknown == ["request-301"] and out.missing == []


def test_a_download_cut_mid_stream_is_fetched_again_from_scratch(make_jina_server, jina_key):
    srv = make_jina_server(batch_queue_s=0.0, batch_processing_s=0.05, batch_drop_first=2,
                           batch_drop_after_bytes=20_000)
    texts = [f"t{i}" for i in range(200)]

    async def go(c):
        sub = await c.submit(texts)
        await c.wait(sub.batch_id, sub.key)
        return await c.output(sub.batch_id, sub.key, len(texts), 768), c.counts
    out, counts = _run(srv, jina_key, go, retry_wait_initial=0.01, retry_wait_jitter=0.01)
    assert out.ok.all() and counts["download_retries"] == 2 and counts["downloads"] == 3
    np.testing.assert_array_equal(out.vectors, fakemodel.embed(NANO, "retrieval.passage", 768, texts))
    assert srv.stats()["batch"]["dropped"] == 2


def test_an_unknown_batch_id_is_batch_gone_and_cancel_of_an_ended_batch_is_false(make_jina_server, jina_key):
    srv = make_jina_server(batch_queue_s=5.0)

    async def go(c):
        with pytest.raises(BatchGone, match="batch_nope"):
            await c.status("batch_nope", 0)
        sub = await c.submit(["a", "b"])
        first = await c.cancel(sub.batch_id, sub.key)
        return first, await c.cancel(sub.batch_id, sub.key), await c.status(sub.batch_id, sub.key)
    first, again, st = _run(srv, jina_key, go)
    assert first is True and again is False and st.status == "cancelled"
    assert srv.stats()["batch"]["cancelled"] == 1


def test_auth_and_balance_errors_are_typed_and_never_carry_the_key(make_jina_server, jina_key):
    srv = make_jina_server(batch_balance_after=1)

    async def go(c):
        await c.submit(["ok"])
        with pytest.raises(BillingError) as e:
            await c.submit(["no balance"])
        return e.value
    err = _run(srv, jina_key, go)
    assert err.status == 402 and jina_key not in str(err)
    with pytest.raises(AuthError) as e:
        _run(srv, "wrong-key-" + jina_key, lambda c: c.submit(["x"]))
    assert jina_key not in str(e.value)


def test_each_submit_attempt_passes_the_limiter_and_429_is_retried_after_retry_after(make_jina_server, jina_key):
    srv = make_jina_server(batch_max_in_flight=1, batch_queue_s=0.3, batch_processing_s=0.0)
    inner = explicit_limiter(6000, 10**9, 4, 10**6)
    seen = {"acquire": 0, "429": 0}

    class Recording:
        async def acquire(self, tokens):
            seen["acquire"] += 1
            return await inner.acquire(tokens)

        def release(self, est, used, **kw):
            seen["429"] += kw.get("rate_limited", False)
            inner.release(est, used, **kw)
    limiter = Recording()

    async def go():
        async with BatchClient(_settings(retry_wait_initial=0.05), api_key=Secret(jina_key), base_url=srv.url,
                               limiter=limiter) as c:
            a = await c.submit(["one"])
            b = await c.submit(["two"])  # 429 "batches in flight" until a has finished
            return a, b, c.counts
    a, b, counts = asyncio.run(go())
    assert a.batch_id != b.batch_id and counts["http_429"] >= 1 and counts["submits"] == 1 + 1 + counts["http_429"]
    assert srv.stats()["batch"]["rejected_in_flight"] == counts["http_429"]
    # every attempt spent a request; the in-flight cap's 429 does not slow the key's pace (it is not a rate)
    assert seen == {"acquire": counts["submits"], "429": 0}


def test_a_cut_line_is_a_transport_error_so_the_download_starts_over():
    from jinabatch.errors import TransportError
    out = BatchOutput(np.zeros((2, 3), np.float32), np.zeros(2, bool))
    read_line(b'{"custom_id": "request-1", "response": {"status_code": 200, "body": {"data": [{"embedding": '
              b'[0.5, 1, 2], "index": 0}], "usage": {"total_tokens": 3}}}}', out, 2, 3)
    assert out.ok.tolist() == [False, True] and out.tokens == 3 and out.missing == [0]
    with pytest.raises(TransportError, match="cut"):
        read_line(b'{"custom_id": "request-0", "resp', out, 2, 3)

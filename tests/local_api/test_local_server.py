"""The local Jina-compatible server over real HTTP: validation (status + detail), vectors in every
embedding type, limits with 429 + Retry-After, fault injection, /stats, admin, CLI."""
import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from jinabatch.local_api import fakemodel as fm

V3, V4, V2 = "jina-embeddings-v3", "jina-embeddings-v4", "jina-embeddings-v2-base-en"
ROOT = Path(__file__).resolve().parents[2]


def post(srv, key, body, **kw):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(srv.url + "/embeddings", json=body, headers=headers, timeout=kw.pop("timeout", 30), **kw)


def vectors(resp, etype="float"):
    data = sorted(resp.json()["data"], key=lambda d: d["index"])
    return np.stack([fm.decode(d["embedding"], etype) for d in data])


# -- auth --------------------------------------------------------------------------------------
def test_missing_key_is_401_saying_how_to_send_it(jina_server):
    r = post(jina_server, None, {"model": V3, "input": ["x"]})
    assert r.status_code == 401 and "Authorization: Bearer" in r.json()["detail"]


def test_wrong_key_is_401_and_the_detail_does_not_echo_it(jina_server):
    r = post(jina_server, "jina_wrong_SECRET_abc", {"model": V3, "input": ["x"]})
    assert r.status_code == 401 and "invalid API key" in r.json()["detail"]
    assert "SECRET" not in r.text


# -- validation --------------------------------------------------------------------------------
@pytest.mark.parametrize("body, status, needle", [
    ({"model": V3, "input": ["x"], "colour": "red"}, 422, "unknown field(s) ['colour']"),
    ({"model": V2, "input": ["x"], "task": "retrieval.query"}, 422, "does not accept field(s) ['task']"),
    ({"model": V2, "input": ["x"], "dimensions": 768}, 422, "does not accept field(s) ['dimensions']"),
    ({"model": V2, "input": ["x"], "late_chunking": True}, 422, "does not accept field(s) ['late_chunking']"),
    ({"model": "jina-embeddings-v9", "input": ["x"]}, 422, "unknown model 'jina-embeddings-v9'"),
    ({"input": ["x"]}, 422, "model: field required"),
    ({"model": V3}, 422, "input: field required"),
    ({"model": V3, "input": ["x"], "task": "retrieval"}, 422, "task: jina-embeddings-v3 accepts"),
    ({"model": V3, "input": ["x"], "dimensions": 100}, 422, "dimensions: jina-embeddings-v3 accepts dimensions"),
    ({"model": V3, "input": ["x"], "dimensions": "64"}, 422, "dimensions: expected an integer"),
    ({"model": V3, "input": ["x"], "embedding_type": "int8"}, 422, "embedding_type: expected one of"),
    ({"model": V3, "input": ["x"], "normalized": "yes"}, 422, "normalized: expected true or false"),
    ({"model": V3, "input": 42}, 422, "input: expected a string or a list"),
    ({"model": V3, "input": ["ok", 7]}, 422, "input[1]: expected a string"),
    ({"model": V3, "input": [{"txt": "x"}]}, 422, "input[0]: expected a string"),
    ({"model": V3, "input": []}, 400, "input: the list is empty"),
    ({"model": V3, "input": ["fine", ""]}, 400, "input[1]: empty string"),
    ({"model": V4, "input": ["a"] * 513}, 400, "513 inputs, over jina-embeddings-v4's limit of 512"),
    ({"model": V3, "input": ["ok", "abcde " * 8191]}, 400, "input[1]: 8193 tokens, over jina-embeddings-v3's limit of 8192"),
    ({"model": V3, "input": ["abcde " * 5000] * 2, "late_chunking": True}, 400, "10004 tokens in total"),
])
def test_invalid_requests_get_the_real_apis_status_and_a_detail_naming_the_problem(jina_server, jina_key, body, status, needle):
    r = post(jina_server, jina_key, body)
    assert r.status_code == status, r.text
    assert needle in r.json()["detail"]


def test_body_that_is_not_json_is_422(jina_server, jina_key):
    r = httpx.post(jina_server.url + "/embeddings", content=b"{nope", timeout=30,
                   headers={"Authorization": f"Bearer {jina_key}", "Content-Type": "application/json"})
    assert r.status_code == 422 and "not valid JSON" in r.json()["detail"]


def test_truncate_true_cuts_an_over_long_input_and_usage_counts_the_kept_tokens(jina_server, jina_key):
    long_text = "abcde " * 9000
    r = post(jina_server, jina_key, {"model": V3, "input": ["short one", long_text], "truncate": True, "dimensions": 32})
    assert r.status_code == 200, r.text
    kept = fm.truncate_text(long_text, 8192)
    assert r.json()["usage"]["total_tokens"] == fm.count_tokens("short one") + 8192
    np.testing.assert_array_equal(vectors(r)[1], fm.expected(V3, None, 32, kept))


def test_truncate_true_with_late_chunking_fits_the_whole_request_in_the_context(jina_server, jina_key):
    body = {"model": V3, "input": ["abcde " * 5000] * 3, "late_chunking": True, "truncate": True, "dimensions": 32}
    r = post(jina_server, jina_key, body)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["total_tokens"] <= 8192
    assert len(r.json()["data"]) == 3


# -- vectors -----------------------------------------------------------------------------------
@pytest.mark.parametrize("etype", ["float", "base64", "binary", "ubinary"])
def test_every_embedding_type_decodes_to_exactly_the_fake_models_vectors(jina_server, jina_key, etype):
    texts = ["alpha beta gamma", "delta epsilon", "zeta eta theta iota"]
    r = post(jina_server, jina_key, {"model": V3, "input": texts, "task": "retrieval.passage",
                                     "dimensions": 64, "embedding_type": etype})
    assert r.status_code == 200, r.text
    want = fm.embed(V3, "retrieval.passage", 64, texts)
    got = vectors(r, etype)
    np.testing.assert_array_equal(got, want if etype in ("float", "base64") else np.packbits(want > 0, axis=1))


def test_response_shape_and_usage_match_the_real_api(jina_server, jina_key):
    texts = ["one two", "three, four!"]
    body = post(jina_server, jina_key, {"model": V3, "input": texts}).json()
    assert body["model"] == V3 and body["object"] == "list"
    n = sum(fm.count_tokens(t) for t in texts)
    assert body["usage"] == {"total_tokens": n, "prompt_tokens": n}
    assert [(d["object"], d["index"], len(d["embedding"])) for d in body["data"]] == [("embedding", 0, 1024), ("embedding", 1, 1024)]


def test_input_may_be_a_single_string_or_text_objects(jina_server, jina_key):
    a = post(jina_server, jina_key, {"model": V3, "input": "same words", "dimensions": 32})
    b = post(jina_server, jina_key, {"model": V3, "input": [{"text": "same words"}], "dimensions": 32})
    np.testing.assert_array_equal(vectors(a), vectors(b))
    assert len(a.json()["data"]) == 1


def test_same_request_gives_the_same_vectors_and_task_changes_them(jina_server, jina_key):
    body = {"model": V3, "input": ["stable output"], "task": "retrieval.query", "dimensions": 128}
    a, b = vectors(post(jina_server, jina_key, body)), vectors(post(jina_server, jina_key, body))
    c = vectors(post(jina_server, jina_key, dict(body, task="retrieval.passage")))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_v2_model_without_task_or_dimensions_returns_768_dims(jina_server, jina_key):
    r = post(jina_server, jina_key, {"model": V2, "input": ["v2 text"], "embedding_type": "base64"})
    np.testing.assert_array_equal(vectors(r, "base64")[0], fm.expected(V2, None, 768, "v2 text"))


def test_late_chunking_and_normalized_false_reach_the_model(jina_server, jina_key):
    chunks = ["chunk one of a doc", "chunk two of a doc"]
    r = post(jina_server, jina_key, {"model": V3, "input": chunks, "late_chunking": True, "normalized": False,
                                     "dimensions": 32, "embedding_type": "base64"})
    want = fm.embed(V3, None, 32, chunks, late_chunking=True, normalized=False)
    np.testing.assert_array_equal(vectors(r, "base64"), want)


# -- limits ------------------------------------------------------------------------------------
def test_rpm_limit_gives_429_with_retry_after_and_is_per_key(make_jina_server, jina_key):
    srv = make_jina_server(rpm=2, api_keys=frozenset({jina_key, "jina_other_key"}))
    body = {"model": V3, "input": ["x"], "dimensions": 32}
    assert [post(srv, jina_key, body).status_code for _ in range(2)] == [200, 200]
    r = post(srv, jina_key, body)
    assert r.status_code == 429 and "2 requests per minute" in r.json()["detail"]
    assert 1 <= int(r.headers["Retry-After"]) <= 30
    assert post(srv, "jina_other_key", body).status_code == 200


def test_a_429_consumes_no_tpm_budget(make_jina_server, jina_key):
    """60 admitted (40 left), 50 refused; a following 30 still fits only if the refusal took nothing."""
    srv = make_jina_server(tpm=100)
    text = lambda n: " ".join(["w"] * (n - 2))  # noqa: E731 - n tokens
    assert post(srv, jina_key, {"model": V3, "input": [text(60)], "dimensions": 32}).status_code == 200
    r = post(srv, jina_key, {"model": V3, "input": [text(50)], "dimensions": 32})
    assert r.status_code == 429 and "100 tokens per minute" in r.json()["detail"]
    assert 5 <= int(r.headers["Retry-After"]) <= 6  # deficit 10 tokens at 100/60 per second
    assert post(srv, jina_key, {"model": V3, "input": [text(30)], "dimensions": 32}).status_code == 200
    assert srv.stats()["tokens"] == 90


def test_a_request_larger_than_the_bucket_is_admitted_when_full_and_drives_it_negative(make_jina_server, jina_key):
    srv = make_jina_server(tpm=100)
    big = {"model": V3, "input": [" ".join(["w"] * 148)], "dimensions": 32}  # 150 tokens
    assert post(srv, jina_key, big).status_code == 200
    r = post(srv, jina_key, {"model": V3, "input": ["w"], "dimensions": 32})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 30


def test_retry_after_can_be_switched_off(make_jina_server, jina_key):
    srv = make_jina_server(rpm=1, retry_after=False)
    body = {"model": V3, "input": ["x"], "dimensions": 32}
    post(srv, jina_key, body)
    r = post(srv, jina_key, body)
    assert r.status_code == 429 and "Retry-After" not in r.headers


async def _until(cond, srv):
    while not cond(srv.stats()):  # poll a state, not a clock; pytest-timeout bounds it
        await asyncio.sleep(0.02)


def test_concurrency_limit_refuses_a_request_while_another_is_in_flight(make_jina_server, jina_key):
    srv = make_jina_server(concurrency=1, latency_ms=400)
    body = {"model": V3, "input": ["x"], "dimensions": 32}

    async def go():
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {jina_key}"}, timeout=30) as c:
            first = asyncio.create_task(c.post(srv.url + "/embeddings", json=body))
            await _until(lambda s: s["in_flight"] == 1, srv)
            second = await c.post(srv.url + "/embeddings", json=body)
            return (await first), second

    first, second = asyncio.run(go())
    assert first.status_code == 200
    assert second.status_code == 429 and second.headers["Retry-After"] == "1"
    assert "concurrency limit of 1" in second.json()["detail"]
    assert srv.stats()["peak_concurrency"] == 1


def test_latency_is_asynchronous_so_requests_really_overlap(make_jina_server, jina_key):
    srv = make_jina_server(latency_ms=300)
    body = {"model": V3, "input": ["x"], "dimensions": 32}

    async def go():
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {jina_key}"}, timeout=30) as c:
            return await asyncio.gather(*[c.post(srv.url + "/embeddings", json=body) for _ in range(4)])

    assert [r.status_code for r in asyncio.run(go())] == [200] * 4
    assert srv.stats()["peak_concurrency"] == 4


# -- faults ------------------------------------------------------------------------------------
def _faulty(make_jina_server, kind, **kw):
    return make_jina_server(faults=(kind,), fault_every=1, **kw)


def test_fault_json500_is_a_500_with_a_detail(make_jina_server, jina_key):
    r = post(_faulty(make_jina_server, "json500"), jina_key, {"model": V3, "input": ["x"]})
    assert r.status_code == 500 and "detail" in r.json()


def test_fault_html502_is_a_502_with_an_html_body(make_jina_server, jina_key):
    r = post(_faulty(make_jina_server, "html502"), jina_key, {"model": V3, "input": ["x"]})
    assert r.status_code == 502 and r.headers["content-type"].startswith("text/html") and "<html>" in r.text


def test_fault_drop_closes_the_connection_without_a_response(make_jina_server, jina_key):
    srv = _faulty(make_jina_server, "drop")
    with pytest.raises(httpx.RemoteProtocolError):
        post(srv, jina_key, {"model": V3, "input": ["x"]})
    assert srv.stats()["dropped"] == 1


def test_fault_stall_outlasts_the_clients_read_timeout(make_jina_server, jina_key):
    srv = _faulty(make_jina_server, "stall", stall_seconds=5)
    with pytest.raises(httpx.ReadTimeout):
        post(srv, jina_key, {"model": V3, "input": ["x"]}, timeout=httpx.Timeout(5, read=0.3))


def test_fault_wrong_count_returns_one_vector_fewer(make_jina_server, jina_key):
    r = post(_faulty(make_jina_server, "wrong_count"), jina_key, {"model": V3, "input": ["a", "b", "c"]})
    assert r.status_code == 200 and len(r.json()["data"]) == 2


def test_fault_wrong_dims_returns_vectors_of_another_size(make_jina_server, jina_key):
    r = post(_faulty(make_jina_server, "wrong_dims"), jina_key,
             {"model": V3, "input": ["a"], "dimensions": 64, "embedding_type": "base64"})
    assert vectors(r, "base64").shape == (1, 32)


def test_fault_nan_puts_a_nan_in_a_vector(make_jina_server, jina_key):
    r = post(_faulty(make_jina_server, "nan"), jina_key, {"model": V3, "input": ["a", "b"], "embedding_type": "base64"})
    assert np.isnan(vectors(r, "base64")).sum() == 1


def test_fault_shuffle_reorders_data_but_keeps_correct_indexes(make_jina_server, jina_key):
    texts = [f"text number {i}" for i in range(8)]
    r = post(_faulty(make_jina_server, "shuffle"), jina_key,
             {"model": V3, "input": texts, "dimensions": 32, "embedding_type": "base64"})
    assert [d["index"] for d in r.json()["data"]] != list(range(8))
    np.testing.assert_array_equal(vectors(r, "base64"), fm.embed(V3, None, 32, texts))


def test_fault_every_n_hits_exactly_every_nth_admitted_request(make_jina_server, jina_key):
    srv = make_jina_server(faults=("json500",), fault_every=3)
    codes = [post(srv, jina_key, {"model": V3, "input": ["x"], "dimensions": 32}).status_code for _ in range(6)]
    assert codes == [200, 200, 500, 200, 200, 500]


def test_fault_rate_is_reproducible_for_a_seed(make_jina_server, jina_key):
    def run():
        srv = make_jina_server(faults=("json500", "html502"), fault_rate=0.4, seed=7)
        return [post(srv, jina_key, {"model": V3, "input": ["x"], "dimensions": 32}).status_code for _ in range(15)]

    first = run()
    assert first == run()
    assert 200 in first and set(first) & {500, 502}


# -- stats and admin ---------------------------------------------------------------------------
def test_stats_count_requests_by_outcome_and_tokens_of_2xx_only(make_jina_server, jina_key):
    srv = make_jina_server(rpm=2, faults=("json500",), fault_every=2)
    ok = {"model": V3, "input": ["one two", "three"], "dimensions": 32}
    post(srv, jina_key, ok)                    # 200
    post(srv, None, ok)                        # 401
    post(srv, jina_key, {"model": V3})         # 422
    post(srv, jina_key, ok)                    # 500 (2nd admitted)
    post(srv, jina_key, ok)                    # 429
    s = srv.stats()
    assert (s["requests"], s["ok"], s["http_429"], s["http_5xx"], s["faults"]) == (5, 1, 1, 1, 1)
    assert s["by_status"] == {"200": 1, "401": 1, "422": 1, "500": 1, "429": 1}
    assert s["tokens"] == fm.count_tokens("one two") + fm.count_tokens("three") and s["inputs"] == 2
    assert s["first_ok_at"] == s["last_ok_at"] and s["first_ok_at"] > 1e9
    assert s["limits"]["rpm"] == 2 and s["settings"]["fault_every"] == 2 and jina_key not in str(s)
    zero = srv.reset_stats()
    assert (zero["requests"], zero["ok"], zero["by_status"], zero["first_ok_at"]) == (0, 0, {}, None)


def test_admin_config_changes_limits_at_run_time_and_needs_the_key(make_jina_server, jina_key):
    srv = make_jina_server()
    body = {"model": V3, "input": ["x"], "dimensions": 32}
    assert httpx.post(srv.base + "/admin/config", json={"rpm": 1}).status_code == 401
    srv.configure(rpm=1)
    assert [post(srv, jina_key, body).status_code for _ in range(2)] == [200, 429]
    srv.configure(rpm=None)
    assert post(srv, jina_key, body).status_code == 200
    with pytest.raises(ValueError, match="cannot change \\['api_keys'\\]"):
        srv.configure(api_keys=["x"])
    with pytest.raises(ValueError, match="unknown kind"):
        srv.configure(faults=["explode"])
    with pytest.raises(ValueError, match="rpm: expected a whole number >= 1"):
        srv.configure(rpm="fast")
    assert post(srv, jina_key, body).status_code == 200  # a refused change leaves the server working


def test_healthz(jina_server):
    assert httpx.get(jina_server.base + "/healthz").json() == {"status": "ok"}


def test_reprs_never_show_the_key(jina_server, jina_key):
    assert jina_key not in repr(jina_server) and jina_key not in repr(jina_server.settings)
    assert jina_key not in str(jina_server.settings.public())


# -- process mode and CLI ----------------------------------------------------------------------
def test_process_mode_serves_the_same_vectors(make_jina_server, jina_key):
    srv = make_jina_server(mode="process", rpm=1000)
    r = post(srv, jina_key, {"model": V3, "input": ["from a subprocess"], "dimensions": 32, "embedding_type": "base64"})
    np.testing.assert_array_equal(vectors(r, "base64")[0], fm.expected(V3, None, 32, "from a subprocess"))
    assert srv.stats()["settings"]["rpm"] == 1000
    proc = srv._proc
    srv.stop()
    assert proc.poll() is not None


def test_cli_prints_the_url_takes_the_key_from_env_and_stops_on_sigterm(jina_key):
    env = dict(os.environ, JINAAI_API_KEY=jina_key)
    proc = subprocess.Popen([sys.executable, str(ROOT / "jobs" / "serve.py"), "--rpm", "50", "--faults", "json500"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        r = httpx.post(url + "/embeddings", json={"model": V3, "input": ["cli"]},
                       headers={"Authorization": f"Bearer {jina_key}"}, timeout=30)
        assert r.status_code == 200
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert jina_key not in url + out + err


def test_cli_rejects_an_unknown_fault_kind():
    r = subprocess.run([sys.executable, str(ROOT / "jobs" / "serve.py"), "--faults", "boom"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "unknown kind(s) ['boom']" in r.stderr


# -- token bucket arithmetic (unit, with a hand-driven clock) ------------------------------------
def test_token_bucket_refills_at_limit_per_60s_up_to_burst_capacity():
    from jinabatch.local_api.limits import TokenBucket
    now = [0.0]
    b = TokenBucket(120, burst_seconds=30, clock=lambda: now[0])  # 2/s, capacity 60
    assert b.capacity == 60 and b.wait_for(60) == 0
    b.take(60)
    assert b.wait_for(10) == pytest.approx(5.0)
    now[0] = 5.0
    assert b.wait_for(10) == 0
    now[0] = 1000.0
    b.take(0)
    assert b.level == 60  # never above capacity


def test_key_limiter_retry_after_is_the_longest_wait_rounded_up():
    from jinabatch.local_api.limits import KeyLimiter
    lim = KeyLimiter(rpm=600, tpm=60)  # 10 req/s, 1 token/s
    assert lim.admit(59) is None
    refusal = lim.admit(3)
    assert refusal.retry_after == 2 and "tokens per minute" in refusal.reason
    assert lim.in_flight == 1


# -- a server that disagrees with the client: its own token count, empty buckets, jitter -----------
def test_usage_limits_and_truncation_follow_the_servers_tokenizer(make_jina_server, jina_key):
    srv = make_jina_server(tokenizer="words", token_scale=1.1)
    tok = fm.tokenizer("words", 1.1)
    long_text = "extraordinarily " * 9000
    r = post(srv, jina_key, {"model": V3, "input": ["one, two", long_text], "truncate": True, "dimensions": 32})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["total_tokens"] == tok.count("one, two") + 8192 != fm.count_tokens("one, two") + 8192
    np.testing.assert_array_equal(vectors(r)[1], fm.expected(V3, None, 32, tok.truncate(long_text, 8192)))
    assert srv.stats()["settings"]["tokenizer"] == "words"


def test_buckets_can_start_empty(make_jina_server, jina_key):
    srv = make_jina_server(rpm=60, bucket_start=0.0)  # one request a second, none banked
    body = {"model": V3, "input": ["x"], "dimensions": 32}
    r = post(srv, jina_key, body)
    assert r.status_code == 429 and r.headers["Retry-After"] == "1"
    assert make_jina_server(rpm=60).stats()["settings"]["bucket_start"] == 1.0


def test_arrival_jitter_delays_requests_before_the_limits_see_them(make_jina_server, jina_key):
    srv = make_jina_server(arrival_jitter_ms=200, seed=4)
    body = {"model": V3, "input": ["x"], "dimensions": 32}
    t0 = time.monotonic()
    for _ in range(5):
        assert post(srv, jina_key, body).status_code == 200
    delay = srv.stats()["arrival_delay_s"]  # five seeded draws of 0..200 ms
    assert 0 < delay < 1.0 and time.monotonic() - t0 >= delay
    assert make_jina_server().stats()["arrival_delay_s"] == 0


def test_the_disagreeing_settings_are_checked_and_reach_a_server_process(make_jina_server, jina_key):
    with pytest.raises(ValueError, match="bucket_start"):
        make_jina_server(bucket_start=2.0)
    with pytest.raises(ValueError, match="tokenizer"):
        make_jina_server(tokenizer="bpe")
    srv = make_jina_server(mode="process", tokenizer="words", token_scale=1.2, bucket_start=0.5, arrival_jitter_ms=5)
    s = srv.stats()["settings"]
    assert (s["tokenizer"], s["token_scale"], s["bucket_start"], s["arrival_jitter_ms"]) == ("words", 1.2, 0.5, 5.0)

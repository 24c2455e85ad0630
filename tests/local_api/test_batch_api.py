"""The stand-in's Batch Embeddings API over real HTTP: submit, status progression, billing once, shuffled JSONL
output mapped by custom_id with exact float32 vectors, errors, cancel, per-key ownership, limits (in-flight cap,
RPM on submit), auth / balance, every fault knob, validation, settings and CLI."""
import time

import httpx
import numpy as np
import orjson
import pytest

from jinabatch.local_api import fakemodel as fm
from jinabatch.local_api.server import ServerSettings, settings_from_args

SMALL, NANO = "jina-embeddings-v5-text-small", "jina-embeddings-v5-text-nano"
FAST = {"batch_queue_s": 0.05, "batch_processing_s": 0.1, "batch_processing_per_1000_s": 0.0}
OTHER_KEY = "jina_test_other_key_for_batches"


def hdr(key):
    return {"Authorization": f"Bearer {key}"} if key else {}


def submit(srv, key, body):
    return httpx.post(srv.url + "/batch/embeddings", json=body, headers=hdr(key), timeout=30)


def get(srv, key, path):
    return httpx.get(srv.url + path, headers=hdr(key), timeout=30)


def submitted(srv, key, texts, **fields):
    r = submit(srv, key, {"model": SMALL, "input": texts, **fields})
    assert r.status_code == 202, r.text
    return r.json()["batch_id"]


def wait_done(srv, key, bid, timeout=20.0):
    deadline = time.monotonic() + timeout
    while True:
        v = get(srv, key, f"/batch/{bid}").json()
        if v["status"] in ("completed", "failed", "cancelled") or time.monotonic() > deadline:
            return v
        time.sleep(0.03)


def lines(resp):
    assert resp.status_code == 200, resp.text
    return [orjson.loads(line) for line in resp.content.splitlines()]


def by_index(out):
    return {int(o["custom_id"].removeprefix("request-")): o["response"] for o in out}


@pytest.fixture
def srv(make_jina_server, jina_key):
    return make_jina_server(api_keys=frozenset({jina_key, OTHER_KEY}), **FAST)


TEXTS = [f"document {i} about {'rivers' if i % 2 else 'mountains'} and word{i % 7}" for i in range(40)]


# -- submit, status, progression ----------------------------------------------------------------------------------
def test_submit_answers_202_with_a_batch_id_the_submitted_status_and_the_time(srv, jina_key):
    r = submit(srv, jina_key, {"model": SMALL, "input": TEXTS})
    body = r.json()
    assert r.status_code == 202 and body["status"] == "submitted" and body["batch_id"].startswith("batch_")
    assert abs(body["created_at"] - time.time()) < 5


def test_status_moves_submitted_processing_completed_with_stats_and_an_output_url(make_jina_server, jina_key):
    srv = make_jina_server(batch_queue_s=1.0, batch_processing_s=1.0, batch_processing_per_1000_s=0.0)
    bid = submitted(srv, jina_key, TEXTS)
    seen, views = [], []
    for _ in range(200):
        v = get(srv, jina_key, f"/batch/{bid}").json()
        views.append(v)
        if not seen or seen[-1] != v["status"]:
            seen.append(v["status"])
        if v["status"] == "completed":
            break
        time.sleep(0.04)
    assert seen == ["submitted", "processing", "completed"]
    first, last = views[0], views[-1]
    assert first["stats"] == {"total": 40, "completed": 0, "failed": 0, "total_tokens": 0} and "output_url" not in first
    tokens = sum(fm.count_tokens(t) for t in TEXTS)
    assert last["stats"] == {"total": 40, "completed": 40, "failed": 0, "total_tokens": tokens}
    assert last["output_url"] == f"/v1/batch/{bid}/output" and last["completed_at"] >= last["created_at"]
    mid = [v["stats"]["completed"] for v in views if v["status"] == "processing"]
    assert mid == sorted(mid) and all(0 <= c < 40 for c in mid)


def test_processing_time_grows_with_the_number_of_inputs(make_jina_server, jina_key):
    srv = make_jina_server(batch_queue_s=0.0, batch_processing_s=0.0, batch_processing_per_1000_s=4.0)
    t0 = time.monotonic()
    bid = submitted(srv, jina_key, ["x y z"] * 500)
    assert get(srv, jina_key, f"/batch/{bid}").json()["status"] == "processing"
    assert wait_done(srv, jina_key, bid)["status"] == "completed"
    assert time.monotonic() - t0 >= 1.95


def test_tokens_are_billed_once_at_the_first_status_query_after_completion(srv, jina_key):
    bid = submitted(srv, jina_key, TEXTS)
    assert srv.stats()["batch"]["billed_tokens"] == 0
    time.sleep(0.3)  # completed, but nobody asked yet
    assert lines(get(srv, jina_key, f"/batch/{bid}/output"))  # a download does not bill
    assert srv.stats()["batch"]["billed_tokens"] == 0
    for _ in range(3):
        assert get(srv, jina_key, f"/batch/{bid}").json()["status"] == "completed"
    tokens = sum(fm.count_tokens(t) for t in TEXTS)
    b = srv.stats()["batch"]
    assert b["billed_tokens"] == tokens and b["by_key"]["key0"]["billed_tokens"] == tokens
    assert b["status_polls"] == 3 and b["submitted"] == 1 and b["completed"] == 1 and b["downloads"] == 1


# -- output -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fields", [{"task": "retrieval.passage", "dimensions": 256}, {},
                                    {"task": "text-matching", "normalized": False, "dimensions": 32}])
def test_output_lines_are_shuffled_and_each_custom_id_carries_exactly_the_vector_of_its_input(srv, jina_key, fields):
    bid = submitted(srv, jina_key, TEXTS, **fields)
    wait_done(srv, jina_key, bid)
    out = lines(get(srv, jina_key, f"/batch/{bid}/output"))
    ids = [o["custom_id"] for o in out]
    assert sorted(ids) == sorted(f"request-{i}" for i in range(40)) and ids != [f"request-{i}" for i in range(40)]
    dims = fields.get("dimensions", 1024)
    want = fm.embed(SMALL, fields.get("task"), dims, TEXTS, normalized=fields.get("normalized", True))
    sync = httpx.post(srv.url + "/embeddings", headers=hdr(jina_key), timeout=30,
                      json={"model": SMALL, "input": TEXTS, **fields}).json()["data"]
    sync_vecs = {d["index"]: np.asarray(d["embedding"], np.float32) for d in sync}
    for i, resp in by_index(out).items():
        assert resp["status_code"] == 200
        body = resp["body"]
        got = np.asarray(body["data"][0]["embedding"], np.float32)
        assert got.shape == (dims,) and np.array_equal(got, want[i]) and np.array_equal(got, sync_vecs[i])
        assert body["data"][0]["index"] == 0 and body["model"] == SMALL
        assert body["usage"]["total_tokens"] == fm.count_tokens(TEXTS[i])


def test_floats_are_written_as_shortest_float32_decimals(srv, jina_key):
    bid = submitted(srv, jina_key, TEXTS[:5], dimensions=64)
    wait_done(srv, jina_key, bid)
    raw = get(srv, jina_key, f"/batch/{bid}/output").content
    first = raw.split(b"\n")[0]
    numbers = first.split(b'"embedding":[')[1].split(b"]")[0].split(b",")
    # float32 needs at most 9 significant digits; a float64 repr of the same value needs ~17
    assert max(len(n.lstrip(b"-").replace(b"0.", b"", 1).lstrip(b"0")) for n in numbers) <= 9 + 4


def test_output_can_be_unshuffled_and_a_second_download_is_identical(make_jina_server, jina_key):
    srv = make_jina_server(batch_shuffle=False, **FAST)
    bid = submitted(srv, jina_key, TEXTS)
    wait_done(srv, jina_key, bid)
    a = get(srv, jina_key, f"/batch/{bid}/output")
    assert [o["custom_id"] for o in lines(a)] == [f"request-{i}" for i in range(40)]
    assert get(srv, jina_key, f"/batch/{bid}/output").content == a.content


def test_a_large_batch_streams_in_blocks_and_every_row_is_exact(srv, jina_key):
    texts = [f"row {i} w{i % 97} w{i % 13}" for i in range(1500)]
    bid = submitted(srv, jina_key, texts, dimensions=32)
    wait_done(srv, jina_key, bid)
    r = get(srv, jina_key, f"/batch/{bid}/output")
    assert r.headers.get("transfer-encoding") == "chunked"
    got = by_index(lines(r))
    want = fm.embed(SMALL, None, 32, texts)
    assert len(got) == 1500
    assert np.array_equal(np.stack([np.asarray(got[i]["body"]["data"][0]["embedding"], np.float32)
                                    for i in range(1500)]), want)


def test_items_the_model_cannot_embed_get_status_400_with_a_reason_and_are_the_errors_file(make_jina_server, jina_key):
    srv = make_jina_server(batch_item_fail_marker="POISON", **FAST)
    too_long = "abcde " * 8200  # over nano's 8192-token context
    texts = ["fine one", too_long, "", "fine two", "this is POISON"]
    r = submit(srv, jina_key, {"model": NANO, "input": texts})
    bid = r.json()["batch_id"]
    v = wait_done(srv, jina_key, bid)
    ok_tokens = fm.count_tokens("fine one") + fm.count_tokens("fine two")
    assert v["status"] == "completed" and v["stats"] == {"total": 5, "completed": 2, "failed": 3,
                                                         "total_tokens": ok_tokens}
    out = by_index(lines(get(srv, jina_key, f"/batch/{bid}/output")))
    assert [out[i]["status_code"] for i in range(5)] == [200, 400, 400, 200, 400]
    assert "input[1]: 8202 tokens, over jina-embeddings-v5-text-nano's limit of 8192" in out[1]["body"]["detail"]
    assert "no truncate" in out[1]["body"]["detail"]
    assert "input[2]: empty string" in out[2]["body"]["detail"]
    assert "batch_item_fail_marker" in out[4]["body"]["detail"]
    assert np.array_equal(np.asarray(out[3]["body"]["data"][0]["embedding"], np.float32),
                          fm.expected(NANO, None, 768, "fine two"))
    errors = lines(get(srv, jina_key, f"/batch/{bid}/errors"))
    assert [e["custom_id"] for e in errors] == ["request-1", "request-2", "request-4"]
    assert all(e["response"] == out[int(e["custom_id"][8:])] for e in errors)


def test_errors_file_of_a_clean_batch_is_empty(srv, jina_key):
    bid = submitted(srv, jina_key, TEXTS[:3])
    wait_done(srv, jina_key, bid)
    r = get(srv, jina_key, f"/batch/{bid}/errors")
    assert r.status_code == 200 and r.content == b""


def test_output_and_errors_are_409_until_completed(make_jina_server, jina_key):
    srv = make_jina_server(batch_queue_s=30)
    bid = submitted(srv, jina_key, TEXTS)
    for path in ("output", "errors"):
        r = get(srv, jina_key, f"/batch/{bid}/{path}")
        assert r.status_code == 409 and "is submitted" in r.json()["detail"] and "not finished" in r.json()["detail"]


# -- ownership, cancel ---------------------------------------------------------------------------------------------
def test_unknown_id_and_another_keys_batch_are_404_never_its_vectors(srv, jina_key):
    bid = submitted(srv, jina_key, TEXTS)
    wait_done(srv, jina_key, bid)
    for key, batch_id in ((jina_key, "batch_doesnotexist"), (OTHER_KEY, bid)):
        for path in ("", "/output", "/errors"):
            r = get(srv, key, f"/batch/{batch_id}{path}")
            assert r.status_code == 404 and "not found" in r.json()["detail"]
        assert httpx.delete(srv.url + f"/batch/{batch_id}", headers=hdr(key)).status_code == 404
    assert get(srv, jina_key, f"/batch/{bid}").json()["status"] == "completed"  # the owner still sees it


def test_cancel_stops_a_running_batch_which_is_then_never_billed_and_has_no_output(make_jina_server, jina_key):
    srv = make_jina_server(batch_queue_s=1.0, batch_processing_s=0.2)
    bid = submitted(srv, jina_key, TEXTS)
    r = httpx.delete(srv.url + f"/batch/{bid}", headers=hdr(jina_key))
    assert r.status_code == 200 and r.json() == {"batch_id": bid, "status": "cancelled"}
    time.sleep(1.3)  # its processing time has passed: still cancelled
    v = get(srv, jina_key, f"/batch/{bid}").json()
    assert v["status"] == "cancelled" and "output_url" not in v
    assert get(srv, jina_key, f"/batch/{bid}/output").status_code == 409
    again = httpx.delete(srv.url + f"/batch/{bid}", headers=hdr(jina_key))
    assert again.status_code == 409 and "already cancelled" in again.json()["detail"]
    b = srv.stats()["batch"]
    assert b["cancelled"] == 1 and b["billed_tokens"] == 0 and b["completed"] == 0


def test_cancelling_a_completed_batch_is_409(srv, jina_key):
    bid = submitted(srv, jina_key, TEXTS[:2])
    wait_done(srv, jina_key, bid)
    r = httpx.delete(srv.url + f"/batch/{bid}", headers=hdr(jina_key))
    assert r.status_code == 409 and "already completed" in r.json()["detail"]


# -- limits, auth, balance -----------------------------------------------------------------------------------------
def test_more_batches_in_flight_than_the_cap_is_429_per_key(make_jina_server, jina_key):
    srv = make_jina_server(api_keys=frozenset({jina_key, OTHER_KEY}), batch_max_in_flight=2, batch_queue_s=30)
    first = submitted(srv, jina_key, ["a"])
    submitted(srv, jina_key, ["b"])
    r = submit(srv, jina_key, {"model": SMALL, "input": ["c"]})
    assert r.status_code == 429 and "batches in flight" in r.json()["detail"]
    assert int(r.headers["Retry-After"]) >= 1
    assert submit(srv, OTHER_KEY, {"model": SMALL, "input": ["c"]}).status_code == 202  # another key's own cap
    b = srv.stats()["batch"]
    assert b["rejected_in_flight"] == 1 and b["in_flight"] == 3
    assert b["by_key"]["key0"]["in_flight"] == 2 and b["by_key"]["key1"]["in_flight"] == 1
    httpx.delete(srv.url + f"/batch/{first}", headers=hdr(jina_key))
    assert submit(srv, jina_key, {"model": SMALL, "input": ["c"]}).status_code == 202


def test_a_submit_spends_the_keys_rpm_and_polls_and_tokens_do_not(make_jina_server, jina_key):
    srv = make_jina_server(rpm=2, tpm=10, **FAST)
    bid = submitted(srv, jina_key, TEXTS)  # ~400 tokens: over the TPM, which a submit does not spend
    for _ in range(10):
        assert get(srv, jina_key, f"/batch/{bid}").status_code == 200
    submitted(srv, jina_key, ["second"])
    r = submit(srv, jina_key, {"model": SMALL, "input": ["third"]})
    assert r.status_code == 429 and "2 requests per minute" in r.json()["detail"]
    assert int(r.headers["Retry-After"]) >= 1
    b = srv.stats()["batch"]
    assert b["submitted"] == 2 and b["rejected_rpm"] == 1


def test_with_polls_spend_rpm_every_batch_request_spends_the_keys_rpm(make_jina_server, jina_key):
    srv = make_jina_server(rpm=3, batch_polls_spend_rpm=True, **FAST)
    bid = submitted(srv, jina_key, ["x"])
    time.sleep(0.3)
    assert get(srv, jina_key, f"/batch/{bid}").json()["status"] == "completed"
    assert get(srv, jina_key, f"/batch/{bid}/output").status_code == 200
    for path in (f"/batch/{bid}", f"/batch/{bid}/output", f"/batch/{bid}/errors"):
        r = get(srv, jina_key, path)
        assert r.status_code == 429 and "3 requests per minute" in r.json()["detail"] and "Retry-After" in r.headers
    assert submit(srv, jina_key, {"model": SMALL, "input": ["y"]}).status_code == 429
    b = srv.stats()["batch"]
    assert b["rejected_rpm"] == 4 and b["status_polls"] == 1 and b["downloads"] == 1


def test_a_missing_or_wrong_key_is_401(srv):
    assert submit(srv, None, {"model": SMALL, "input": ["x"]}).status_code == 401
    r = get(srv, "jina_wrong_SECRET", "/batch/batch_x")
    assert r.status_code == 401 and "SECRET" not in r.text


def test_auth_fail_after_n_batch_requests_answers_401(make_jina_server, jina_key):
    srv = make_jina_server(batch_auth_fail_after=2, **FAST)
    bid = submitted(srv, jina_key, ["x"])
    assert get(srv, jina_key, f"/batch/{bid}").status_code == 200
    r = get(srv, jina_key, f"/batch/{bid}")
    assert r.status_code == 401 and "batch_auth_fail_after" in r.json()["detail"]
    assert submit(srv, jina_key, {"model": SMALL, "input": ["y"]}).status_code == 401
    srv.configure(batch_auth_fail_after=None)
    assert get(srv, jina_key, f"/batch/{bid}").status_code == 200


def test_an_empty_balance_answers_402_after_n_submits(make_jina_server, jina_key):
    srv = make_jina_server(batch_balance_after=1, **FAST)
    bid = submitted(srv, jina_key, ["x"])
    r = submit(srv, jina_key, {"model": SMALL, "input": ["y"]})
    assert r.status_code == 402 and "balance" in r.json()["detail"]
    assert get(srv, jina_key, f"/batch/{bid}").status_code == 200  # polls still answer
    srv.configure(batch_balance_after=1)  # setting it again starts the count again
    assert submit(srv, jina_key, {"model": SMALL, "input": ["y"]}).status_code == 202


# -- fault knobs ---------------------------------------------------------------------------------------------------
def test_fail_first_fails_the_next_n_batches_as_a_whole_unbilled(make_jina_server, jina_key):
    srv = make_jina_server(batch_fail_first=1, **FAST)
    bad, good = submitted(srv, jina_key, TEXTS), submitted(srv, jina_key, TEXTS)
    v = wait_done(srv, jina_key, bad)
    assert v["status"] == "failed" and "batch_fail_first" in v["error"] and "output_url" not in v
    assert v["stats"] == {"total": 40, "completed": 0, "failed": 40, "total_tokens": 0}
    r = get(srv, jina_key, f"/batch/{bad}/output")
    assert r.status_code == 409 and "ended failed" in r.json()["detail"]
    assert wait_done(srv, jina_key, good)["status"] == "completed"
    b = srv.stats()["batch"]
    assert b["failed"] == 1 and b["completed"] == 1
    assert b["billed_tokens"] == sum(fm.count_tokens(t) for t in TEXTS)


def test_fail_marker_fails_the_batch_holding_it(make_jina_server, jina_key):
    srv = make_jina_server(batch_fail_marker="BOOM", **FAST)
    bad, good = submitted(srv, jina_key, ["ok", "a BOOM here"]), submitted(srv, jina_key, ["ok"])
    assert "batch_fail_marker" in wait_done(srv, jina_key, bad)["error"]
    assert wait_done(srv, jina_key, good)["status"] == "completed"


def test_unknown_custom_id_adds_one_line_for_an_input_never_submitted(make_jina_server, jina_key):
    srv = make_jina_server(batch_unknown_custom_id=True, **FAST)
    bid = submitted(srv, jina_key, TEXTS[:10])
    wait_done(srv, jina_key, bid)
    ids = [o["custom_id"] for o in lines(get(srv, jina_key, f"/batch/{bid}/output"))]
    assert len(ids) == 11 and sorted(ids) == sorted([f"request-{i}" for i in range(10)] + ["request-10"])


def test_drop_first_breaks_the_next_download_mid_stream_and_the_retry_is_whole(make_jina_server, jina_key):
    srv = make_jina_server(batch_drop_first=1, batch_drop_after_bytes=5000, **FAST)
    bid = submitted(srv, jina_key, TEXTS)
    wait_done(srv, jina_key, bid)
    got = bytearray()
    with pytest.raises(httpx.TransportError):
        with httpx.stream("GET", srv.url + f"/batch/{bid}/output", headers=hdr(jina_key), timeout=30) as r:
            for chunk in r.iter_bytes():
                got += chunk
    assert 0 < len(got) <= 5000
    whole = get(srv, jina_key, f"/batch/{bid}/output")
    assert len(lines(whole)) == 40 and whole.content.startswith(bytes(got))
    b = srv.stats()["batch"]
    assert b["dropped"] == 1 and b["downloads"] == 2


def test_expire_s_makes_output_and_errors_410_gone_after_completion(make_jina_server, jina_key):
    srv = make_jina_server(batch_expire_s=30, **FAST)
    bid = submitted(srv, jina_key, TEXTS[:3])
    wait_done(srv, jina_key, bid)
    assert get(srv, jina_key, f"/batch/{bid}/output").status_code == 200
    srv.configure(batch_expire_s=0.1)  # expiry acts at download time
    time.sleep(0.2)
    for path in ("output", "errors"):
        r = get(srv, jina_key, f"/batch/{bid}/{path}")
        assert r.status_code == 410 and "expired" in r.json()["detail"]


def test_forget_batches_makes_every_known_id_404(srv, jina_key):
    done, running = submitted(srv, jina_key, ["x"]), None
    wait_done(srv, jina_key, done)
    running = submitted(srv, jina_key, ["y"])
    assert httpx.post(srv.url.removesuffix("/v1") + "/admin/batch/forget").status_code == 401
    assert srv.forget_batches() == 2
    for bid in (done, running):
        assert get(srv, jina_key, f"/batch/{bid}").status_code == 404
    assert srv.stats()["batch"]["in_flight"] == 0


# -- validation ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("body, status, needle", [
    ({"model": "jina-embeddings-v3", "input": ["x"]}, 422, "'jina-embeddings-v3' is not served by the batch"),
    ({"model": "jina-embeddings-v9", "input": ["x"]}, 422, "unknown model 'jina-embeddings-v9'"),
    ({"input": ["x"]}, 422, "model: field required"),
    ({"model": SMALL, "input": ["x"], "embedding_type": "float"}, 422, "embedding_type: not a field of the batch"),
    ({"model": SMALL, "input": ["x"], "truncate": True}, 422, "truncate: not a field of the batch"),
    ({"model": SMALL, "input": ["x"], "late_chunking": False}, 422, "late_chunking: not a field of the batch"),
    ({"model": SMALL, "input_file": "gs://b/f.jsonl"}, 422, "input_file: not a field of the batch"),
    ({"model": SMALL, "input": ["x"], "colour": "red"}, 422, "unknown field(s) ['colour']"),
    ({"model": SMALL}, 422, "input: field required"),
    ({"model": SMALL, "input": "x"}, 422, "input: expected a list of strings"),
    ({"model": SMALL, "input": ["x", 3]}, 422, "input[1]: expected a string"),
    ({"model": SMALL, "input": []}, 400, "input: the list is empty"),
    ({"model": SMALL, "input": ["x"] * 4}, 400, "4 inputs, over the batch limit of 3"),
    ({"model": SMALL, "input": ["x"], "task": "retrieval"}, 422, "task: jina-embeddings-v5-text-small accepts"),
    ({"model": NANO, "input": ["x"], "dimensions": 1024}, 422, "dimensions: jina-embeddings-v5-text-nano accepts"),
    ({"model": SMALL, "input": ["x"], "normalized": "yes"}, 422, "normalized: expected true or false"),
])
def test_invalid_submits_name_the_field_or_model(make_jina_server, jina_key, body, status, needle):
    srv = make_jina_server(batch_max_inputs=3)
    r = submit(srv, jina_key, body)
    assert r.status_code == status, r.text
    assert needle in r.json()["detail"]
    assert srv.stats()["batch"]["submitted"] == 0


def test_body_that_is_not_json_is_422(srv, jina_key):
    r = httpx.post(srv.url + "/batch/embeddings", content=b"{nope", headers=hdr(jina_key), timeout=30)
    assert r.status_code == 422 and "not valid JSON" in r.json()["detail"]


# -- settings, stats, CLI ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("changes, needle", [
    ({"batch_max_in_flight": 0}, "batch_max_in_flight: must be >= 1"),
    ({"batch_queue_s": -1}, "batch_queue_s: expected a number >= 0"),
    ({"batch_shuffle": "no"}, "batch_shuffle: expected true or false"),
    ({"batch_fail_marker": ""}, "batch_fail_marker: expected a non-empty text"),
    ({"batch_max_inputs": 2.5}, "batch_max_inputs: expected a whole number >= 0"),
    ({"batch_expire_s": "soon"}, "batch_expire_s: expected a number >= 0, or null for none"),
])
def test_bad_batch_settings_are_refused_naming_them(srv, changes, needle):
    with pytest.raises(ValueError, match=needle.replace("(", r"\(")):
        ServerSettings(**changes)
    with pytest.raises(ValueError, match=needle.replace("(", r"\(")):
        srv.configure(**changes)


def test_stats_reset_clears_the_counters_but_keeps_the_batches(srv, jina_key):
    bid = submitted(srv, jina_key, ["x"])
    srv.reset_stats()
    b = srv.stats()["batch"]
    assert b["submitted"] == 0 and b["status_polls"] == 0
    assert wait_done(srv, jina_key, bid)["status"] == "completed"


def test_cli_flags_set_every_batch_knob():
    s = settings_from_args(["--batch-queue-s", "2", "--batch-processing-s", "3", "--batch-max-in-flight", "7",
                            "--no-batch-shuffle", "--batch-fail-first", "1", "--batch-fail-marker", "BOOM",
                            "--batch-item-fail-marker", "BAD", "--batch-unknown-custom-id", "--batch-drop-first", "2",
                            "--batch-drop-after-bytes", "99", "--batch-expire-s", "5", "--batch-balance-after", "3",
                            "--batch-auth-fail-after", "4", "--batch-max-inputs", "50",
                            "--batch-processing-per-1000-s", "0.5", "--batch-polls-spend-rpm"])
    assert (s.batch_queue_s, s.batch_processing_s, s.batch_max_in_flight, s.batch_shuffle) == (2, 3, 7, False)
    assert (s.batch_fail_first, s.batch_fail_marker, s.batch_item_fail_marker) == (1, "BOOM", "BAD")
    assert (s.batch_unknown_custom_id, s.batch_drop_first, s.batch_drop_after_bytes) == (True, 2, 99)
    assert (s.batch_expire_s, s.batch_balance_after, s.batch_auth_fail_after) == (5, 3, 4)
    assert (s.batch_max_inputs, s.batch_processing_per_1000_s, s.batch_polls_spend_rpm) == (50, 0.5, True)
    d = settings_from_args([])
    assert (d.batch_queue_s, d.batch_max_in_flight, d.batch_shuffle, d.batch_max_inputs) == (0.2, 4, True, 10_000)


def test_a_subprocess_server_gets_the_batch_knobs_and_serves_batches(make_jina_server, jina_key):
    srv = make_jina_server(mode="process", batch_shuffle=False, batch_item_fail_marker="BAD", **FAST)
    settings = srv.stats()["settings"]
    assert settings["batch_shuffle"] is False and settings["batch_item_fail_marker"] == "BAD"
    assert settings["batch_queue_s"] == 0.05
    bid = submitted(srv, jina_key, ["good text", "BAD text"])
    wait_done(srv, jina_key, bid)
    out = lines(get(srv, jina_key, f"/batch/{bid}/output"))
    assert [o["custom_id"] for o in out] == ["request-0", "request-1"]
    assert [o["response"]["status_code"] for o in out] == [200, 400]

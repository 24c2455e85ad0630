"""Narrow unit tests of request bodies, decoding and error mapping (pure functions; the same paths are
exercised over real HTTP in test_jina_client.py)."""
import base64
import json

import httpx
import numpy as np
import pytest

from jinabatch.local_api import fakemodel
from jinabatch.errors import (AuthError, BillingError, InvalidRequest, RateLimited, ResponseError,
                              ServerError)
from jinabatch.models import get_model, spec_of
from jinabatch.jina.wire import build_body, cap_named, decode_response, error_for_status, parse_retry_after, short_text

V3, V2 = get_model("jina-embeddings-v3"), get_model("jina-embeddings-v2-base-en")
BODY_KW = dict(embedding_type="base64", task="retrieval.passage", dimensions=256, late_chunking=False,
               normalized=True, truncate=False)


def _response(vectors, embedding_type="base64", order=None, tokens=7):
    enc = fakemodel.encode(vectors, embedding_type)
    order = range(len(enc)) if order is None else order
    doc = {"model": "m", "object": "list", "usage": {"total_tokens": tokens, "prompt_tokens": tokens},
           "data": [{"object": "embedding", "index": i, "embedding": enc[i]} for i in order]}
    return json.dumps(doc).encode()


def test_v3_body_has_jina_fields_and_no_none():
    body = build_body(V3, ["a"], **{**BODY_KW, "dimensions": None})
    assert body == {"model": "jina-embeddings-v3", "input": ["a"], "embedding_type": "base64",
                    "task": "retrieval.passage", "late_chunking": False, "normalized": True, "truncate": False}


def test_v2_body_omits_task_dimensions_and_late_chunking():
    body = build_body(V2, ["a"], **BODY_KW)
    assert set(body) == {"model", "input", "embedding_type", "normalized", "truncate"}


def test_the_body_carries_only_the_fields_given_for_a_model_the_table_does_not_know():
    body = build_body(spec_of("jina-embeddings-v6"), ["a"], **BODY_KW, fields=frozenset({"task"}))
    assert body == {"model": "jina-embeddings-v6", "input": ["a"], "task": "retrieval.passage"}


@pytest.mark.parametrize("detail, inputs, want", [
    ("input: 600 inputs, over jina-embeddings-v5-text-small's limit of 512 per request; split the batch", 600,
     ("inputs", 512)),
    ("input: List should have at most 2048 items after validation, not 3000", 3000, ("inputs", 2048)),
    ("Too many inputs in one request", 300, ("inputs", 150)),  # names no figure: half
    ("input: 9000 tokens in total, over the limit of 8192 for one late-chunking request", 30, ("context", 8192)),
    ("request too large: 70000 tokens, over the limit of 65536 tokens per request (input)", 30, ("tokens", 65536)),
    ("input[3]: 9000 tokens, over jina-embeddings-v5-text-small's limit of 8192; shorten it", 30, None),  # one input
    ("input[1]: empty string; remove it or send some text", 30, None),
    ("task: jina-embeddings-v5-text-small accepts ['retrieval.query']", 30, None),
    ("too many inputs", 1, None),  # one input cannot be cut
])
def test_a_refusal_names_a_request_cap_or_none(detail, inputs, want):
    assert cap_named(detail, "jina-embeddings-v5-text-small", inputs=inputs) == want


def test_base64_rows_decode_in_index_order_into_one_array():
    vecs = fakemodel.embed("jina-embeddings-v3", "retrieval.passage", 64, ["a b", "c", "d e f"])
    got, tokens = decode_response(_response(vecs, order=[2, 0, 1]), n_inputs=3, embedding_type="base64", dim=64)
    assert got.dtype == np.float32 and got.shape == (3, 64) and got.flags.c_contiguous
    np.testing.assert_array_equal(got, vecs)
    assert tokens == 7


@pytest.mark.parametrize("kind,dtype", [("binary", np.int8), ("ubinary", np.uint8)])
def test_binary_types_decode_to_packed_sign_bits(kind, dtype):
    vecs = fakemodel.embed("jina-embeddings-v3", None, 64, ["x y", "z"])
    got, _ = decode_response(_response(vecs, kind), n_inputs=2, embedding_type=kind, dim=64)
    assert got.dtype == dtype and got.shape == (2, 8)
    np.testing.assert_array_equal(got.view(np.uint8), np.packbits(vecs > 0, axis=1))


@pytest.mark.parametrize("mutate,match", [
    (lambda d: d["data"].pop(), "1 embeddings for 2 inputs"),
    (lambda d: d["data"][1].update(index=0), "indices are not"),
    (lambda d: d["data"][0].update(embedding=base64.b64encode(b"\0" * 12).decode()), "has 3 values; expected 4"),
    (lambda d: d["data"][0].update(embedding="not base64!"), "not a base64"),
    (lambda d: d.pop("data"), "no 'data'"),
])
def test_malformed_responses_raise_response_error(mutate, match):
    doc = json.loads(_response(np.ones((2, 4), np.float32)))
    mutate(doc)
    with pytest.raises(ResponseError, match=match):
        decode_response(json.dumps(doc).encode(), n_inputs=2, embedding_type="base64", dim=4)


def test_nan_in_a_float_response_is_a_response_error():
    body = b'{"data": [{"index": 0, "embedding": [0.1, NaN]}], "usage": {"total_tokens": 1}}'
    with pytest.raises(ResponseError, match="non-finite .* input 0"):
        decode_response(body, n_inputs=1, embedding_type="float", dim=2)


def test_unknown_dim_accepts_any_width_if_rows_agree():
    got, _ = decode_response(_response(np.ones((2, 8), np.float32)), n_inputs=2, embedding_type="base64", dim=None)
    assert got.shape == (2, 8)


@pytest.mark.parametrize("status,cls", [(401, AuthError), (402, BillingError), (403, BillingError),
                                        (400, InvalidRequest), (422, InvalidRequest), (429, RateLimited),
                                        (500, ServerError), (502, ServerError), (503, ServerError)])
def test_status_maps_to_its_error_class(status, cls):
    err = error_for_status(status, b'{"detail": "the reason"}', httpx.Headers(), model="m", key_env="K")
    assert type(err) is cls and err.status == status and "the reason" in str(err)


def test_html_502_becomes_a_short_message():
    page = b"<html><head><title>502 Bad Gateway</title><style>x{}</style></head><body>" + b"<p>junk</p>" * 500
    err = error_for_status(502, page, httpx.Headers(), model="m", key_env="K")
    assert "502 Bad Gateway" in str(err) and "junk" not in str(err) and len(str(err)) < 300


def test_validation_detail_lists_are_flattened():
    body = json.dumps({"detail": [{"loc": ["body", "dimensions"], "msg": "bad value"}]}).encode()
    assert short_text(body) == "dimensions: bad value"


def test_retry_after_seconds_and_http_date():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == pytest.approx(10.0)
    assert parse_retry_after("garbage") is None and parse_retry_after(None) is None
    err = error_for_status(429, b"{}", httpx.Headers({"Retry-After": "2.5"}), model="m", key_env="K")
    assert err.retry_after == 2.5

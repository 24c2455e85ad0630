"""The stand-in serves Jina's current models with the table's validation — v5 small and nano, the code models, v4's
return_multivector — and, when told to, models the job's table does not know, under their own names (real HTTP)."""
import httpx
import numpy as np
import pytest

from jinabatch.local_api import fakemodel as fm
from jinabatch.local_api.catalog import extra_model

SMALL, NANO = "jina-embeddings-v5-text-small", "jina-embeddings-v5-text-nano"
CODE_S, CODE_L = "jina-code-embeddings-0.5b", "jina-code-embeddings-1.5b"
V6 = "jina-embeddings-v6-test"  # a name the job's table does not know
TEXTS = ["def read_csv(path): return open(path).read()", "How do I read a CSV file?"]


def post(srv, key, body):
    return httpx.post(srv.url + "/embeddings", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def vectors(resp, etype="float"):
    data = sorted(resp.json()["data"], key=lambda d: d["index"])
    return np.stack([fm.decode(d["embedding"], etype) for d in data])


@pytest.mark.parametrize("model, task, dims", [
    (SMALL, "retrieval.passage", 256), (SMALL, "text-matching", 32), (NANO, "retrieval.query", 128),
    (NANO, "clustering", 512), (CODE_S, "nl2code.passage", 128), (CODE_L, "qa.query", 512),
])
def test_each_new_model_answers_exact_vectors_at_a_truncated_dimension(jina_server, jina_key, model, task, dims):
    r = post(jina_server, jina_key, {"model": model, "input": TEXTS, "task": task, "dimensions": dims,
                                     "embedding_type": "base64", "truncate": True})
    assert r.status_code == 200, r.text
    got = vectors(r, "base64")
    assert got.shape == (2, dims)
    np.testing.assert_array_equal(got, fm.embed(model, task, dims, TEXTS))
    assert not np.array_equal(got, fm.embed(model, "retrieval.query" if "passage" in task else "qa.passage", dims,
                                            TEXTS))  # the task reaches the model


def test_without_dimensions_the_code_models_answer_the_stand_ins_width(jina_server, jina_key):
    """The table leaves their width to the answer; the stand-in answers the model pages' (896, 1536)."""
    widths = {m: vectors(post(jina_server, jina_key, {"model": m, "input": ["x = 1"]})).shape[1]
              for m in (CODE_S, CODE_L, SMALL, NANO)}
    assert widths == {CODE_S: 896, CODE_L: 1536, SMALL: 1024, NANO: 768}


@pytest.mark.parametrize("body, status, needle", [
    ({"model": CODE_S, "input": ["x"], "normalized": True}, 422, "does not accept field(s) ['normalized']"),
    ({"model": CODE_L, "input": ["x"], "late_chunking": True}, 422, "does not accept field(s) ['late_chunking']"),
    ({"model": CODE_S, "input": ["x"], "task": "retrieval.passage"}, 422, "task: jina-code-embeddings-0.5b accepts"),
    ({"model": CODE_S, "input": ["x"], "dimensions": 1024}, 422, "accepts dimensions [64, 128, 256, 512, 896]"),
    ({"model": NANO, "input": ["x"], "dimensions": 1024}, 422, "accepts dimensions [32, 64, 128, 256, 512, 768]"),
    ({"model": SMALL, "input": ["x"], "task": "code.passage"}, 422, "task: jina-embeddings-v5-text-small accepts"),
    ({"model": "jina-embeddings-v3", "input": ["x"], "return_multivector": False}, 422,
     "does not accept field(s) ['return_multivector']"),
    ({"model": "jina-embeddings-v4", "input": ["x"], "return_multivector": True}, 400, "one vector per input"),
    ({"model": SMALL, "input": ["x"] * 513}, 400, "513 inputs, over jina-embeddings-v5-text-small's limit of 512"),
    ({"model": NANO, "input": ["abcde " * 8191]}, 400, "over jina-embeddings-v5-text-nano's limit of 8192"),
    ({"model": V6, "input": ["x"]}, 422, f"unknown model '{V6}'"),  # only when told to serve it
])
def test_the_new_models_refuse_what_the_table_says_they_do_not_take(jina_server, jina_key, body, status, needle):
    r = post(jina_server, jina_key, body)
    assert r.status_code == status, r.text
    assert needle in r.json()["detail"]


def test_v5_takes_late_chunking_and_v4_return_multivector_false(jina_server, jina_key):
    r = post(jina_server, jina_key, {"model": SMALL, "input": TEXTS, "late_chunking": True, "dimensions": 64})
    np.testing.assert_array_equal(vectors(r), fm.embed(SMALL, None, 64, TEXTS, late_chunking=True))
    r = post(jina_server, jina_key, {"model": "jina-embeddings-v4", "input": TEXTS, "return_multivector": False})
    assert r.status_code == 200 and vectors(r).shape == (2, 2048)


def test_a_model_the_table_does_not_know_is_served_under_its_own_name_with_its_figures(make_jina_server, jina_key):
    srv = make_jina_server(extra_models=[{"name": V6, "dim": 640, "dims": [64, 640], "max_inputs": 3,
                                          "tasks": ["retrieval.query", "retrieval.passage"]}])
    r = post(srv, jina_key, {"model": V6, "input": TEXTS, "task": "retrieval.passage"})
    np.testing.assert_array_equal(vectors(r), fm.embed(V6, "retrieval.passage", 640, TEXTS))
    r = post(srv, jina_key, {"model": V6, "input": TEXTS, "dimensions": 64})
    np.testing.assert_array_equal(vectors(r), fm.embed(V6, None, 64, TEXTS))
    for body, needle in [({"input": ["x"] * 4}, "4 inputs, over jina-embeddings-v6-test's limit of 3"),
                         ({"input": ["x"], "dimensions": 128}, "accepts dimensions [64, 640]"),
                         ({"input": ["x"], "late_chunking": True}, "does not accept field(s) ['late_chunking']")]:
        assert needle in post(srv, jina_key, {"model": V6, **body}).json()["detail"]
    assert post(srv, jina_key, {"model": "jina-embeddings-v3", "input": ["x"]}).status_code == 200  # the table too


def test_an_extra_model_reaches_a_server_process_and_is_listed_in_its_settings(make_jina_server, jina_key):
    srv = make_jina_server(mode="process", extra_models=[{"name": V6, "dim": 96, "fields": []}])
    r = post(srv, jina_key, {"model": V6, "input": ["from a subprocess"]})
    np.testing.assert_array_equal(vectors(r)[0], fm.expected(V6, None, 96, "from a subprocess"))
    refused = post(srv, jina_key, {"model": V6, "input": ["x"], "embedding_type": "base64"})
    assert refused.status_code == 422 and "['embedding_type']" in refused.json()["detail"]  # it takes no field
    assert srv.stats()["settings"]["extra_models"] == [
        {"name": V6, "dim": 96, "dims": None, "tasks": [], "fields": [], "max_inputs": 2048, "max_tokens": 8192}]


@pytest.mark.parametrize("spec, needle", [
    ({"name": V6}, "needs a \"name\" and a \"dim\""),
    ({"name": V6, "dim": 5000}, "from 1 to 4096"),
    ({"name": V6, "dim": 8, "fields": ["colour"]}, "unknown field(s) ['colour']"),
    ({"name": V6, "dim": 8, "size": 1}, "takes dims, tasks"),
])
def test_an_extra_model_that_is_not_described_fully_is_refused_naming_what_is_missing(spec, needle):
    with pytest.raises(ValueError) as e:
        extra_model(spec)
    assert needle in str(e.value)


def test_an_extra_model_cannot_shadow_a_model_of_the_table(make_jina_server):
    with pytest.raises(ValueError, match="is in the model table already"):
        make_jina_server(extra_models=[{"name": SMALL, "dim": 8}])

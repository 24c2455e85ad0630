"""JinaEmbeddingFunction (the seed's pymilvus contract) over real HTTP to the local server."""
import asyncio
import logging
import pickle

import numpy as np
import pytest

from jinabatch.local_api import fakemodel
from jinabatch.errors import AuthError
from jinabatch.jina.facade import JinaEmbeddingFunction
from jinabatch.local_api.server import LocalServer, ServerSettings

KEY = "jina_facade_test_key_91c2e4d8aa07"
V3 = "jina-embeddings-v3"
DOCS = ["Artificial intelligence was founded as an academic discipline in 1956.",
        "Alan Turing was the first person to conduct substantial research in AI.",
        "Born in Maida Vale, London, Turing was raised in southern England."]


@pytest.fixture(scope="module")
def server():
    with LocalServer(ServerSettings(api_keys=frozenset({KEY}))) as srv:
        yield srv


@pytest.fixture
def srv(server):
    server.reset_stats()
    yield server


@pytest.fixture
def ef(srv):
    with JinaEmbeddingFunction(api_key=KEY, base_url=srv.url, dimensions=256) as f:
        yield f


def _check(got, task, dims=256, model=V3, texts=DOCS):
    assert isinstance(got, list) and len(got) == len(texts)
    assert all(v.dtype == np.float32 and v.shape == (dims,) for v in got)
    np.testing.assert_array_equal(np.stack(got), fakemodel.embed(model, task, dims, texts))


def test_encode_documents_uses_retrieval_passage(ef):
    _check(ef.encode_documents(DOCS), "retrieval.passage")


def test_encode_queries_uses_retrieval_query(ef):
    _check(ef.encode_queries(DOCS), "retrieval.query")


def test_call_uses_the_constructors_task(srv):
    with JinaEmbeddingFunction(api_key=KEY, base_url=srv.url, task="text-matching", dimensions=64) as f:
        _check(f(DOCS), "text-matching", dims=64)


def test_dim_without_dimensions_probes_once_then_caches(srv):
    with JinaEmbeddingFunction(api_key=KEY, base_url=srv.url) as f:
        assert srv.stats()["requests"] == 0
        assert f.dim == 1024
        assert srv.stats()["requests"] == 1
        assert f.dim == 1024
        assert srv.stats()["requests"] == 1


def test_dim_with_dimensions_makes_no_request(ef, srv):
    assert ef.dim == 256 and srv.stats()["requests"] == 0


def test_v2_model_sends_no_task(srv):
    name = "jina-embeddings-v2-base-en"
    with JinaEmbeddingFunction(name, api_key=KEY, base_url=srv.url) as f:
        _check(f.encode_queries(DOCS), None, dims=768, model=name)
        _check(f.encode_documents(DOCS), None, dims=768, model=name)
        assert f.dim == 768
    assert srv.stats()["by_status"] == {"200": 2}


def test_many_texts_are_batched(srv):
    texts = [f"sentence number {i} about topic {i % 7}" for i in range(25)]
    with JinaEmbeddingFunction(api_key=KEY, base_url=srv.url, dimensions=32, max_inputs_per_request=10) as f:
        _check(f.encode_documents(texts), "retrieval.passage", dims=32, texts=texts)
    assert srv.stats()["requests"] == 3


def test_works_inside_a_running_event_loop(ef):
    """Like Jupyter: a sync call from a coroutine must not hit 'event loop is already running'."""
    async def notebook_cell():
        return ef.encode_queries(DOCS[:1])

    got = asyncio.run(notebook_cell())
    _check(got, "retrieval.query", texts=DOCS[:1])


def test_key_from_env_and_missing_key(srv, monkeypatch):
    monkeypatch.setenv("JINAAI_API_KEY", KEY)
    with JinaEmbeddingFunction(base_url=srv.url, dimensions=32) as f:
        assert len(f.encode_documents(["x"])) == 1
    monkeypatch.delenv("JINAAI_API_KEY")
    monkeypatch.delenv("JINA_API_KEY", raising=False)
    srv.reset_stats()
    with pytest.raises(AuthError, match="JINAAI_API_KEY"):
        JinaEmbeddingFunction(base_url=srv.url)
    assert srv.stats()["requests"] == 0


def test_closed_function_refuses_calls_and_close_is_idempotent(srv):
    f = JinaEmbeddingFunction(api_key=KEY, base_url=srv.url, dimensions=32)
    f.close()
    f.close()
    with pytest.raises(RuntimeError, match="closed"):
        f.encode_documents(["x"])
    assert not f._runner.thread.is_alive()


def test_a_single_string_is_refused(ef):
    with pytest.raises(TypeError, match="list of strings"):
        ef.encode_documents("just one string")


def test_key_not_in_repr_logs_or_pickle(srv, caplog):
    caplog.set_level(logging.DEBUG)
    with JinaEmbeddingFunction(api_key=KEY, base_url=srv.url, dimensions=32) as f:
        f.encode_documents(["x"])
        assert KEY not in repr(f) and "***" in repr(f)
        with pytest.raises(TypeError, match="not picklable"):
            pickle.dumps(f)
    assert caplog.records and KEY not in caplog.text

"""The client and JinaEmbeddingFunction with Jina's current models and with a model the table does not know, over
real HTTP to the stand-in: the document and query side of each family, only the written fields sent to an unknown
model, its width taken from the answer, and an inputs cap learnt from the API's 400."""
import asyncio

import numpy as np
import pytest

from jinabatch.errors import InvalidRequest
from jinabatch.jina.client import JinaClient
from jinabatch.jina.facade import JinaEmbeddingFunction
from jinabatch.local_api import fakemodel
from jinabatch.local_api.server import LocalServer, ServerSettings

KEY = "jina_models_test_key_0c8d51e2f7a3"
SMALL, NANO = "jina-embeddings-v5-text-small", "jina-embeddings-v5-text-nano"
CODE_S, CODE_L = "jina-code-embeddings-0.5b", "jina-code-embeddings-1.5b"
V6 = "jina-embeddings-v6-test"  # served by the stand-in, unknown to the table
BARE = "jina-embeddings-v6-bare"  # takes no optional field at all: a request with one more field is a 422
TINY = "jina-embeddings-v6-tiny"  # at most 40 inputs a request, a cap Jina would not have published
SHORT = "jina-embeddings-v6-short"  # a context of 300 tokens for a late-chunking request
TEXTS = [f"function number {i} parses a CSV file into rows of {i * 3} columns" for i in range(12)]
FAST = dict(retry_wait_initial=0.01, retry_wait_max=0.05, retry_wait_jitter=0.0)


@pytest.fixture(scope="module")
def srv():
    extra = [{"name": V6, "dim": 640, "tasks": ["retrieval.query", "retrieval.passage", "text-matching"]},
             {"name": BARE, "dim": 320, "fields": []}, {"name": TINY, "dim": 128, "max_inputs": 40},
             {"name": SHORT, "dim": 64, "max_tokens": 300, "fields": ["late_chunking"]}]
    with LocalServer(ServerSettings(api_keys=frozenset({KEY}), extra_models=extra, record_inputs=1)) as s:
        yield s


def exact(model, task, dims, texts=TEXTS):
    return fakemodel.embed(model, task, dims, texts)


@pytest.mark.parametrize("model, dims, task", [
    (SMALL, 128, "retrieval.passage"), (NANO, 64, "retrieval.passage"),
    (CODE_S, 256, "nl2code.passage"), (CODE_L, 128, "nl2code.passage")])
def test_the_client_embeds_each_new_model_exactly_with_its_document_task_by_default(srv, model, dims, task):
    async def go():
        async with JinaClient(api_key=KEY, base_url=srv.url, model=model, dimensions=dims, **FAST) as c:
            return (await c.embed_batch(TEXTS, truncate=True)).vectors

    np.testing.assert_array_equal(asyncio.run(go()), exact(model, task, dims))


@pytest.mark.parametrize("model, task, sides, dims", [
    ("jina-embeddings-v3", None, ("retrieval.passage", "retrieval.query"), 1024),
    ("jina-embeddings-v4", None, ("retrieval.passage", "retrieval.query"), 128),
    (SMALL, None, ("retrieval.passage", "retrieval.query"), 256),
    (NANO, "text-matching", ("text-matching", "text-matching"), 32),
    (SMALL, "clustering", ("clustering", "clustering"), 64),
    (CODE_S, None, ("nl2code.passage", "nl2code.query"), 64),
    (CODE_L, "qa.passage", ("qa.passage", "qa.query"), 256),
    ("jina-embeddings-v2-base-en", None, (None, None), 768),
])
def test_encode_documents_and_encode_queries_use_the_two_sides_of_each_familys_task(srv, model, task, sides, dims):
    kw = {"task": task} if task else {}
    with JinaEmbeddingFunction(model, KEY, dimensions=None if model.endswith("-en") else dims, base_url=srv.url,
                               **kw) as ef:
        np.testing.assert_array_equal(np.stack(ef.encode_documents(TEXTS[:3])), exact(model, sides[0], dims, TEXTS[:3]))
        np.testing.assert_array_equal(np.stack(ef.encode_queries(TEXTS[:3])), exact(model, sides[1], dims, TEXTS[:3]))
        assert ef.task == sides[0]


def test_the_facade_keeps_pymilvus_defaults(srv):
    with JinaEmbeddingFunction(api_key=KEY, base_url=srv.url) as ef:
        assert (ef.model_name, ef.task, ef.dim) == ("jina-embeddings-v3", "retrieval.passage", 1024)
        np.testing.assert_array_equal(np.stack(ef(TEXTS[:2])), exact("jina-embeddings-v3", "retrieval.passage", 1024,
                                                                       TEXTS[:2]))


def test_an_unknown_model_gets_only_the_fields_written_and_its_width_from_the_answer(srv):
    """BARE refuses every optional field: the facade's defaults (embedding_type, normalized, a task) are not sent."""
    with JinaEmbeddingFunction(BARE, KEY, base_url=srv.url) as ef:
        assert ef.task is None and ef.dim == 320  # one probe request: the width is the answer's
        np.testing.assert_array_equal(np.stack(ef.encode_documents(TEXTS[:2])), exact(BARE, None, 320, TEXTS[:2]))
        np.testing.assert_array_equal(np.stack(ef.encode_queries(TEXTS[:2])), exact(BARE, None, 320, TEXTS[:2]))


def test_an_unknown_model_with_a_task_and_dimensions_sends_them_and_the_query_side(srv):
    with JinaEmbeddingFunction(V6, KEY, task="retrieval.passage", dimensions=64, base_url=srv.url) as ef:
        np.testing.assert_array_equal(np.stack(ef.encode_documents(TEXTS[:2])),
                                      exact(V6, "retrieval.passage", 64, TEXTS[:2]))
        np.testing.assert_array_equal(np.stack(ef.encode_queries(TEXTS[:2])),
                                      exact(V6, "retrieval.query", 64, TEXTS[:2]))
    with JinaEmbeddingFunction(V6, KEY, task="text-matching", base_url=srv.url) as ef:  # symmetric
        np.testing.assert_array_equal(np.stack(ef.encode_queries(TEXTS[:2])), exact(V6, "text-matching", 640, TEXTS[:2]))


def test_a_400_naming_a_smaller_input_cap_cuts_every_request_after_it(srv):
    """TINY takes 40 inputs a request; the client starts at 512 (the cautious start for an unpublished cap): the
    first request is refused naming 40, then every request fits and every vector is exact."""
    texts = [f"row {i} of many short texts" for i in range(130)]
    srv.reset_stats()

    async def go():
        async with JinaClient(api_key=KEY, base_url=srv.url, model=TINY, **FAST) as c:
            assert c.max_inputs == 512
            vectors = await c.embed(texts)
            return vectors, c.max_inputs

    vectors, cap = asyncio.run(go())
    np.testing.assert_array_equal(vectors, exact(TINY, None, 128, texts))
    stats = srv.stats()
    assert cap == 40 and stats["by_status"] == {"400": 1, "200": 4}  # 130 = 40 + 40 + 40 + 10


def test_a_refusal_that_names_no_cap_is_the_callers_error(srv):
    async def go():
        async with JinaClient(api_key=KEY, base_url=srv.url, model=TINY, **FAST) as c:
            await c.embed(["fine", ""])

    with pytest.raises(InvalidRequest, match="empty string"):
        asyncio.run(go())


def test_a_400_naming_a_late_chunking_context_lowers_the_tokens_of_one_request(srv):
    """The job starts at 8,192 tokens a late-chunking request where the context is not published; SHORT's 400
    names 300, and the client's request budget under late chunking (what windows are cut by) follows it."""
    texts = ["one two three four five " * 20] * 4  # ~ 4 × 102 tokens: one request over 300

    async def go():
        async with JinaClient(api_key=KEY, base_url=srv.url, model=SHORT, late_chunking=True, **FAST) as c:
            assert c.max_tokens(late_chunking=True) == 8192
            with pytest.raises(InvalidRequest, match="tokens in total"):
                await c.embed_batch(texts)
            return c.max_tokens(late_chunking=True), c.max_tokens(late_chunking=False)

    assert asyncio.run(go()) == (300, 60_000)

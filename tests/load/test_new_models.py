"""Models the job has not been told about, end to end: embed on the session's Ray against the stand-in (real HTTP),
load into Milvus Lite, search.

* a model the table does not know, served by the stand-in under a new name — without ``jina.dimensions`` (the
  width is the endpoint check's answer) and with it; its inputs cap is lower than the job's cautious start and
  is learnt from the 400 that names it;
* a code model, whose width Jina's API reference does not give: taken from the answer, queries with
  ``nl2code.query``.

Each time: every vector equals the fake model's for its text; the report, every shard footer, the collection's
vector field and its pinned properties carry the model and the width the vectors really have; search embeds the
query with the query side of the collection's task (the top hit is recomputed by brute force).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from pymilvus import MilvusClient

from corpus_gen import assert_vectors_match, make_corpus, read_output
from fixtures_ray import base_config
from jinabatch.config import parse_config
from jinabatch.embed.driver import run_embed
from jinabatch.load.milvus import PROP, Target
from jinabatch.load.search import search_many
from jinabatch.load.stage import run_load
from jinabatch.local_api import fakemodel

pytestmark = pytest.mark.slow
V6 = "jina-embeddings-v6-test"
V6_SERVED = {"name": V6, "dim": 640, "dims": [64, 640], "max_inputs": 50,
             "tasks": ["retrieval.query", "retrieval.passage", "text-matching"]}
FLAT = {"type": "FLAT", "metric": "COSINE", "params": {}}


def _config(tmp_path: Path, corpus, url: str, jina: dict, drop: tuple[str, ...] = ()):
    data = base_config(Path(corpus.files[0]).parent, tmp_path / "out", url, corpus={"columns": ["text", "title"]},
                       jina=jina, milvus={"uri": str(tmp_path / "lite.db"), "collection": "docs", "index": FLAT})
    for key in drop:  # settings the user did not write
        data["jina"].pop(key)
    return parse_config(data, source="test")


def _best(texts: dict, model: str, dims: int, passage: str | None, query_task: str | None, query: str):
    ids = list(texts)
    docs = fakemodel.embed(model, passage, dims, [texts[i] for i in ids]).astype(np.float64)
    q = fakemodel.embed(model, query_task, dims, [query])[0].astype(np.float64)
    scores = docs @ q / np.linalg.norm(docs, axis=1) / np.linalg.norm(q)
    order = np.argsort(-scores)
    assert scores[order[0]] - scores[order[1]] > 1e-4, "near-tie: pick another query"
    return ids[order[0]]


def _embed_load_search(tmp_path, cfg, corpus, *, model, dims, passage, query_task, fields=None):
    rep = run_embed(cfg, progress=False)
    texts = {r["id"]: r["text"] for r in corpus.rows}
    assert rep.finished and (rep.rows_embedded, rep.rows_dead_letter) == (len(texts), 0)
    assert (rep.model, rep.dimensions, rep.task) == (model, dims, passage)
    assert (rep.embedding["model"], rep.embedding["dimensions"]) == (model, dims)
    if fields is not None:
        assert rep.embedding["fields"] == fields  # what the requests carried: only what was written
    assert_vectors_match(read_output(tmp_path / "out"), texts, model=model, task=passage, dims=dims)
    for f in sorted((tmp_path / "out" / "shards").glob("shard-*.parquet")):
        meta = json.loads(pq.ParquetFile(f).metadata.metadata[b"jinabatch"])
        assert (meta["model"], meta["dimensions"]) == (model, dims), f

    load = run_load(cfg, progress=False)
    client = MilvusClient(cfg.milvus.uri)
    desc = client.describe_collection(load.physical)
    vector = next(f for f in desc["fields"] if f["name"] == "embedding")
    props = desc["properties"]
    assert int(vector["params"]["dim"]) == dims and load.physical.endswith(f"_{dims}d_{load.physical[-18:]}")
    assert (props[PROP + "model"], props[PROP + "dimensions"], props[PROP + "task"]) == (model, str(dims),
                                                                                      passage or "")
    assert json.loads(props[PROP + "embedding"]) == rep.embedding

    query = "sunlit orchard lantern"
    target = Target(client, cfg.milvus.uri, "lite")
    hits = search_many(target, cfg, [query], k=3)[0]
    assert hits[0].id == _best(texts, model, dims, passage, query_task, query)
    client.close()
    return rep


def test_a_model_the_table_does_not_know_takes_its_width_from_the_endpoints_answer(
        tmp_path, ray_local, embed_config, make_jina_server):
    """No jina.dimensions: the endpoint check's answer (640) makes the output and the collection; the requests carry
    the task alone; the stand-in's cap of 50 inputs (the job starts at 512) is learnt from its 400."""
    srv = make_jina_server(extra_models=[V6_SERVED])
    corpus = make_corpus(tmp_path / "corpus", files=2, rows_per_file=150, row_group_size=50)
    cfg = _config(tmp_path, corpus, srv.url, {"model": V6}, drop=("dimensions",))
    assert cfg.jina.dim is None and not cfg.jina.spec.known
    rep = _embed_load_search(tmp_path, cfg, corpus, model=V6, dims=640, passage="retrieval.passage",
                             query_task="retrieval.query", fields=["task"])
    statuses = srv.stats()["by_status"]
    assert statuses.get("400", 0) >= 1 and set(statuses) <= {"200", "400"}  # each shard task learnt the cap once
    assert rep.requests >= len(corpus.rows) / 50


def test_a_model_the_table_does_not_know_with_dimensions_set_sends_them(tmp_path, ray_local, embed_config,
                                                                         make_jina_server):
    srv = make_jina_server(extra_models=[V6_SERVED])
    corpus = make_corpus(tmp_path / "corpus", files=1, rows_per_file=120, row_group_size=40)
    cfg = _config(tmp_path, corpus, srv.url, {"model": V6, "dimensions": 64, "task": "text-matching"})
    _embed_load_search(tmp_path, cfg, corpus, model=V6, dims=64, passage="text-matching", query_task="text-matching",
                       fields=["dimensions", "task"])


def test_a_code_model_without_dimensions_is_made_for_the_width_the_api_answers(tmp_path, ray_local, embed_config,
                                                                               jina_server):
    corpus = make_corpus(tmp_path / "corpus", files=1, rows_per_file=120, row_group_size=40)
    cfg = _config(tmp_path, corpus, jina_server.url, {"model": "jina-code-embeddings-0.5b"},
                  drop=("dimensions", "task"))
    assert cfg.jina.dim is None
    _embed_load_search(tmp_path, cfg, corpus, model="jina-code-embeddings-0.5b", dims=896,
                       passage="nl2code.passage", query_task="nl2code.query")

"""A model upgrade end to end (README, "Upgrading the model (backfill)": jina-embeddings-v3 at 1024 dims →
jina-embeddings-v5-text-small at 1024): embed the same corpus with a new model or dimension into a NEW output, load
it into a new collection behind the SAME alias, compare, roll back.

Real parts: the embed stage on the session's local Ray against the local Jina-compatible server, the load stage
into Milvus Lite (and, marked ``milvus``, into the real Milvus server by bulk import). Every expectation is
recomputed here with the fake model (``jinabatch.local_api.fakemodel``): the output vectors, and each top-k by
brute force — the query embedded with the model and dimensions a collection was loaded with, against that
collection's passage vectors (FLAT index, so Milvus's top-k is exact).

What the tests pin down: until the new load switches the alias — while embedding, and during the load itself up to
verification — searches answer from the old collection with the old model's vectors; afterwards from the new one;
``compare(..., "previous")`` shows each side's exact top-k and the ids that moved between them; ``--rollback``
returns the alias to the old collection and its model.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pymilvus import MilvusClient

import jinabatch.load.stage as stage
from corpus_gen import Corpus, assert_vectors_match, make_corpus, read_output
from fixtures_milvus import make_output, sample_texts
from jinabatch.embed.driver import run_embed
from jinabatch.load.compare import compare, diff_ranks
from jinabatch.load.milvus import Target, alias_target
from jinabatch.load.search import search_many
from jinabatch.load.stage import run_load
from jinabatch.local_api import fakemodel

ROOT = Path(__file__).resolve().parents[2]
FLAT = {"type": "FLAT", "metric": "COSINE", "params": {}}
K = 5
# queries of the corpus's words; the two models rank some of their top-5 differently (checked: ids move)
QUERIES = ["violin harbor meadow", "saffron canyon", "ember velvet compass", "quartz lantern engine pepper"]


def exact_top_k(texts: dict, model: str, dims: int, query: str, k: int = K) -> list:
    """The ids of the exact top-k for ``query`` over {id: text}, embedded as a collection of ``model`` at ``dims``
    is searched (passages retrieval.passage, query retrieval.query). Refuses near-ties, which could order either way."""
    ids = list(texts)
    docs = fakemodel.embed(model, "retrieval.passage", dims, [texts[i] for i in ids]).astype(np.float64)
    q = fakemodel.embed(model, "retrieval.query", dims, [query])[0].astype(np.float64)
    scores = docs @ q / (np.linalg.norm(docs, axis=1) * np.linalg.norm(q))
    order = np.argsort(-scores)[: k + 1]
    assert np.min(-np.diff(scores[order])) > 1e-4, f"near-tie in the top-{k} of {query!r}: pick another query"
    return [ids[i] for i in order[:k]]


def vector_dim(client: MilvusClient, name: str) -> int:
    field = next(f for f in client.describe_collection(name)["fields"] if f["name"] == "embedding")
    return int(field["params"]["dim"])


def embed_checked(embed_config, corpus: Corpus, url: str, out: Path, model: str, dims: int, milvus: dict):
    """Run the embed stage for ``model`` at ``dims`` into ``out``; every vector must be the fake model's."""
    cfg = embed_config(Path(corpus.files[0]).parent, out, url, corpus={"columns": ["text", "title"]},
                       jina={"model": model, "dimensions": dims}, milvus=milvus)
    rep = run_embed(cfg, progress=False)
    assert rep.finished and rep.rows_embedded == len(corpus.rows)
    assert_vectors_match(read_output(out), {r["id"]: r["text"] for r in corpus.rows}, model=model, dims=dims)
    return cfg


def _upgrade(tmp_path, ray_local, embed_config, jina_server, monkeypatch, milvus: dict, old: tuple, new: tuple):
    """The walkthrough with the function API; returns (config of the new model, first load, second load, the test's
    client, answers(cfg) -> {query: ids of the alias's top-k}, {id: text})."""
    corpus = make_corpus(tmp_path / "corpus", files=2, rows_per_file=150, row_group_size=50)
    texts = {r["id"]: r["text"] for r in corpus.rows}
    want_old = {q: exact_top_k(texts, *old, q) for q in QUERIES}
    want_new = {q: exact_top_k(texts, *new, q) for q in QUERIES}
    assert want_old != want_new, "the two models must rank some query differently for this test to mean anything"
    milvus = {"index": FLAT, "keep_previous": 1, **milvus}
    alias = milvus["collection"]

    # 1. the current model: embed, load, search
    cfg_old = embed_checked(embed_config, corpus, jina_server.url, tmp_path / "emb-old", *old, milvus)
    first = run_load(cfg_old, progress=False)
    client = MilvusClient(milvus["uri"])
    assert vector_dim(client, first.physical) == old[1]
    target = Target(client, milvus["uri"], "server" if milvus["uri"].startswith("http") else "lite")

    def answers(cfg) -> dict:
        return {q: [h.id for h in hits] for q, hits in zip(QUERIES, search_many(target, cfg, QUERIES, K))}

    assert answers(cfg_old) == want_old

    # 2. the new model into a NEW output: Milvus untouched, searches (even with the new config) answer as before
    cfg_new = embed_checked(embed_config, corpus, jina_server.url, tmp_path / "emb-new", *new, milvus)
    assert alias_target(client, alias) == first.physical and answers(cfg_new) == want_old

    # 3. load: up to verification the alias still answers with the old collection and model
    seen = {}
    real_verify = stage.verify

    def verify_then_search(cl, name, inp):
        checked = real_verify(cl, name, inp)
        seen.update(name=name, alias=alias_target(cl, alias), dim=vector_dim(cl, name), answers=answers(cfg_new))
        return checked

    monkeypatch.setattr(stage, "verify", verify_then_search)
    second = run_load(cfg_new, progress=False)
    assert seen == {"name": second.physical, "alias": first.physical, "dim": new[1], "answers": want_old}
    # ...and after the switch with the new one
    assert (second.previous, alias_target(client, alias), vector_dim(client, second.physical)) == (
        first.physical, second.physical, new[1])
    assert answers(cfg_old) == want_new  # whatever config asks: the collection decides the model
    some = [corpus.rows[i]["id"] for i in (0, 77, 299)]
    rows = {r["id"]: r["embedding"] for r in client.query(alias, filter=f"id in {some}", output_fields=["embedding"])}
    want_vectors = fakemodel.embed(new[0], "retrieval.passage", new[1], [texts[i] for i in some])
    assert all(np.array_equal(np.asarray(rows[i], np.float32), v) for i, v in zip(some, want_vectors))

    # 4. compare with the previous collection: each side is its model's exact top-k, moves are their difference
    rep = compare(cfg_new, "previous", QUERIES, k=K)
    assert (rep.current.collection, rep.current.model, rep.current.dimensions) == (second.physical, *new)
    assert (rep.other.collection, rep.other.model, rep.other.dimensions) == (first.physical, *old)
    for c in rep.comparisons:
        assert [h.id for h in c.hits] == want_new[c.query] and [h.id for h in c.other_hits] == want_old[c.query]
        assert (c.overlap, c.entered, c.left, c.moved) == diff_ranks(want_new[c.query], want_old[c.query])
    assert sum(len(c.entered) + len(c.moved) for c in rep.comparisons) > 0
    return cfg_new, first, second, client, answers, texts


@pytest.mark.slow
def test_v3_1024_to_v5_small_1024_on_lite_switches_at_the_load_and_rolls_back(tmp_path, ray_local, embed_config,
                                                                              jina_server, monkeypatch):
    """The README's worked backfill: same width, new model — the collection decides which model embeds a query."""
    lite = str(tmp_path / "milvus" / "lite.db")
    cfg, first, second, client, answers, texts = _upgrade(
        tmp_path, ray_local, embed_config, jina_server, monkeypatch, {"uri": lite, "collection": "docs"},
        ("jina-embeddings-v3", 1024), ("jina-embeddings-v5-text-small", 1024))
    back = run_load(cfg, rollback=True, progress=False)  # what jobs/load.py --rollback runs
    assert (back.physical, back.previous) == (first.physical, second.physical)
    assert alias_target(client, "docs") == first.physical
    assert answers(cfg) == {q: exact_top_k(texts, "jina-embeddings-v3", 1024, q) for q in QUERIES}
    # the collection rolled back from stays until the next load: it can still be compared by name
    rep = compare(cfg, second.physical, QUERIES[:1], k=K)
    assert (rep.current.model, rep.other.model) == ("jina-embeddings-v3", "jina-embeddings-v5-text-small")


@pytest.mark.slow
@pytest.mark.milvus
def test_v3_to_v4_on_the_milvus_server_with_bulk_import_and_the_rollback_job(
        tmp_path, ray_local, embed_config, jina_server, milvus_server, monkeypatch):
    cfg, first, second, client, _, _ = _upgrade(
        tmp_path, ray_local, embed_config, jina_server, monkeypatch,
        {"uri": milvus_server.uri, "collection": "backfill_v4"},
        ("jina-embeddings-v3", 256), ("jina-embeddings-v4", 512))
    assert second.mode == "bulk"
    path = tmp_path / "backfill.toml"
    path.write_text(_toml({"output": {"path": str(tmp_path / "emb-new")},
                           "milvus": {"uri": milvus_server.uri, "collection": "backfill_v4"}}))
    r = _job("jobs/load.py", str(path), "--rollback")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["physical"] == first.physical
    assert alias_target(client, "backfill_v4") == first.physical and vector_dim(client, first.physical) == 256
    client.close()


def _toml(data: dict) -> str:
    def val(v):
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {val(x)}" for k, x in v.items()) + " }"
        return json.dumps(v) if not isinstance(v, bool) else str(v).lower()
    return "\n".join(f"[{s}]\n" + "\n".join(f"{k} = {val(v)}" for k, v in kv.items()) + "\n" for s, kv in data.items())


def _job(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "RAY_AUTH_MODE": "disabled"})


def test_the_walkthrough_commands_load_compare_and_roll_back(tmp_path):
    """As README's walkthrough runs them (outputs written as the embed stage would): jobs/load.py for v3 at 1024, then
    for v5-text-small at 1024; jobs/search.py --compare previous (text and --json, queries from a file);
    jobs/load.py --rollback."""
    texts = sample_texts(80)
    texts[3] = "quasar nebula telescope log"  # the only row with these words: first for the query in both models
    models = {"emb-v3": "jina-embeddings-v3", "emb-v5-small": "jina-embeddings-v5-text-small"}
    milvus = {"uri": str(tmp_path / "lite.db"), "collection": "docs", "index": FLAT}
    configs = {}
    for name, model in models.items():
        make_output(tmp_path / name, texts, model=model, dims=1024, rows_per_shard=40)
        configs[name] = tmp_path / f"{name}.toml"
        jina = {"base_url": "local", "model": model, "dimensions": 1024}
        configs[name].write_text(_toml({"jina": jina, "output": {"path": str(tmp_path / name)}, "milvus": milvus}))
    loads = [_job("jobs/load.py", str(configs[n]), "--no-progress") for n in configs]
    assert [r.returncode for r in loads] == [0, 0], loads[-1].stderr[-2000:]
    old, new = (json.loads(r.stdout.strip().splitlines()[-1])["physical"] for r in loads)
    queries = tmp_path / "queries.txt"
    queries.write_text("quasar nebula telescope\n\nmarathon training for beginners\n")
    cfg = str(configs["emb-v5-small"])

    shown = _job("jobs/search.py", cfg, "--compare", "previous", "--queries", str(queries), "-k", "3")
    assert shown.returncode == 0, shown.stderr[-2000:]
    lines = shown.stdout.splitlines()
    assert lines[0] == f"alias 'docs': {new} (jina-embeddings-v5-text-small, 1024 dims, task retrieval.query)"
    assert lines[1] == f"other 'previous': {old} (jina-embeddings-v3, 1024 dims, task retrieval.query)"
    assert lines[2].startswith("2 queries, k = 3: mean overlap@3 ")
    q1 = next(i for i, x in enumerate(lines) if x.startswith("query 1: quasar nebula telescope  overlap@3 "))
    assert lines[q1 + 1].split() == ["rank", "alias", "score", "change", "other", "score"]
    row = lines[q1 + 2].split()  # rank 1 on both sides, unchanged
    assert (row[0], row[1], row[3], row[4]) == ("1", "doc-000003", "=", "doc-000003")

    as_json = _job("jobs/search.py", cfg, "--compare", "previous", "--queries", str(queries), "-k", "3", "--json")
    data = json.loads(as_json.stdout)
    assert [q["query"] for q in data["queries"]] == ["quasar nebula telescope", "marathon training for beginners"]
    assert (data["current"]["collection"], data["other"]["collection"]) == (new, old)
    assert data["queries"][0]["hits"][0]["id"] == data["queries"][0]["other_hits"][0]["id"] == "doc-000003"
    assert data["summary"]["mean_overlap_at_k"] == pytest.approx(
        np.mean([q["overlap_at_k"] for q in data["queries"]]), abs=1e-4)

    back = _job("jobs/load.py", cfg, "--rollback")
    assert back.returncode == 0 and json.loads(back.stdout.strip().splitlines()[-1])["physical"] == old
    after = _job("jobs/search.py", cfg, "quasar nebula telescope", "-k", "1", "--json")
    assert json.loads(after.stdout)["id"] == "doc-000003"
    missing = _job("jobs/search.py", cfg, "--compare", "previous", "x")  # the old one was the first load
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines()[-1] == (
        f"error: LoadError: alias 'docs' points at {old}, which was its first load: there is no previous collection "
        f"to compare with; collections of alias 'docs' besides the live one, newest first: {new}")

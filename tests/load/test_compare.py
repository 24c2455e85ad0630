"""Comparing the alias's answers with another collection's (``jinabatch.load.compare``) on real Milvus Lite.

Outputs are written with ``make_output`` (vectors exactly the local server's, ``fakemodel.embed``) and loaded
with the real load stage under a FLAT index, so every top-k is exact and can be recomputed here by brute force
with the fake model: the query embedded by *each collection's own* model and dimensions (task
retrieval.query) against that collection's passage vectors.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from pymilvus import MilvusClient

from fixtures_milvus import make_output, sample_texts
from jinabatch.errors import ConfigError, LoadError
from jinabatch.load.compare import Move, compare, diff_ranks, format_comparison
from jinabatch.load.stage import run_load
from jinabatch.local_api import fakemodel

FLAT = {"type": "FLAT", "metric": "COSINE", "params": {}}
QUERY = "quasar nebula telescope"


def brute_top_k(model: str, dims: int, texts: list[str], query: str, k: int) -> tuple[list[str], list[float]]:
    """The exact top-k ids (make_output's doc-NNNNNN) and cosines for ``query`` over ``texts`` with the fake model."""
    docs = fakemodel.embed(model, "retrieval.passage", dims, texts).astype(np.float64)
    q = fakemodel.embed(model, "retrieval.query", dims, [query])[0].astype(np.float64)
    scores = docs @ q / (np.linalg.norm(docs, axis=1) * np.linalg.norm(q))
    order = np.argsort(-scores, kind="stable")[:k]
    return [f"doc-{i:06d}" for i in order], [float(scores[i]) for i in order]


def designed_texts() -> tuple[list[str], list[str]]:
    """(old corpus, new corpus): docs 0-4 are about QUERY's words, nothing else is. In the new corpus doc 4 is about
    bicycles and doc 7 about QUERY's words — so going old → new, doc-000007 must enter the top-5, doc-000004 leave."""
    old = sample_texts(40)
    for i in range(5):
        old[i] = f"quasar nebula telescope observing log night{i}"
    new = list(old)
    new[4] = "replacing a bicycle chain and cleaning the gears"
    new[7] = "quasar nebula telescope observing log night7"
    return old, new


@pytest.fixture
def two_loads(tmp_path, milvus_config):
    """Alias loaded first from the old corpus at v3 64d, then (switching the alias) from the new one at v4 512d."""
    old, new = designed_texts()
    make_output(tmp_path / "old", old, model="jina-embeddings-v3", dims=64)
    make_output(tmp_path / "new", new, model="jina-embeddings-v4", dims=512)
    lite = str(tmp_path / "lite.db")
    cfg_old = milvus_config(lite, tmp_path / "old", index=FLAT, keep_previous=1)
    cfg_new = milvus_config(lite, tmp_path / "new", index=FLAT, keep_previous=1, collection=cfg_old.milvus.collection)
    first, second = run_load(cfg_old, progress=False), run_load(cfg_new, progress=False)
    return cfg_new, first, second, old, new, lite


def test_diff_ranks_names_what_entered_left_and_changed_rank_going_from_other_to_alias():
    overlap, entered, left, moved = diff_ranks(["a", "b", "c", "d"], ["b", "a", "x", "d"])
    assert overlap == 3
    assert entered == [Move("c", 3, None)] and left == [Move("x", None, 3)]
    assert moved == [Move("a", 1, 2), Move("b", 2, 1)] and [m.shift for m in moved] == [1, -1]
    assert diff_ranks([], []) == (0, [], [], [])


def test_compare_reports_the_ids_a_corpus_and_model_change_must_move(two_loads):
    """Known case: doc-000007 enters, doc-000004 leaves; each side's ranking and scores are the exact top-k of the
    query embedded with that side's own model and dims (v4 512d for the alias, v3 64d for previous)."""
    cfg, first, second, old, new, _ = two_loads
    rep = compare(cfg, "previous", [QUERY, sample_texts(40)[12]], k=5)
    assert (rep.current.collection, rep.current.model, rep.current.dimensions) == (
        second.physical, "jina-embeddings-v4", 512)
    assert (rep.other.collection, rep.other.model, rep.other.dimensions, rep.other.name) == (
        first.physical, "jina-embeddings-v3", 64, "previous")
    c = rep.comparisons[0]
    assert [m.id for m in c.entered] == ["doc-000007"] and [m.id for m in c.left] == ["doc-000004"]
    assert c.overlap == 4 and c.overlap_at_k == 0.8
    for hits, (model, dims, texts) in ((c.hits, ("jina-embeddings-v4", 512, new)),
                                       (c.other_hits, ("jina-embeddings-v3", 64, old))):
        ids, scores = brute_top_k(model, dims, texts, QUERY, 5)
        assert [h.id for h in hits] == ids, model
        assert np.allclose([h.score for h in hits], scores, atol=1e-5), model
    want = diff_ranks(*(brute_top_k(m, d, t, QUERY, 5)[0] for m, d, t in (("jina-embeddings-v4", 512, new),
                                                                          ("jina-embeddings-v3", 64, old))))
    assert (c.overlap, c.entered, c.left, c.moved) == want
    assert c.hits[0].fields["text"] in new[:4] + [new[7]]


def test_compare_summary_and_report_output_carry_overlap_and_moves(two_loads):
    cfg, first, second, *_ = two_loads
    rep = compare(cfg, first.physical, [QUERY, "jazz piano chord voicings"], k=5)
    s = rep.summary()
    assert s["queries"] == 2 and s["mean_overlap_at_k"] == pytest.approx(rep.mean_overlap, abs=1e-4)
    assert s["mean_overlap_at_k"] == pytest.approx(np.mean([c.overlap_at_k for c in rep.comparisons]), abs=1e-4)
    assert s["entered"] == sum(len(c.entered) for c in rep.comparisons) >= 1
    data = json.loads(json.dumps(rep.to_dict(), default=str))
    q0 = data["queries"][0]
    assert q0["entered"] == [{"id": "doc-000007", "rank": q0["entered"][0]["rank"], "other_rank": None, "shift": 0}]
    assert [h["rank"] for h in q0["hits"]] == [1, 2, 3, 4, 5] and data["other"]["dimensions"] == 64
    text = format_comparison(rep)
    assert f"alias {cfg.milvus.collection!r}: {second.physical} (jina-embeddings-v4, 512 dims" in text
    assert "overlap@5 4/5 = 0.80" in text
    assert "  entered  doc-000007 (rank " in text and "  left     doc-000004 (was " in text
    assert "quasar nebula telescope observing log night7" in text  # the text column of what entered


def test_a_reload_of_the_same_output_compares_identical(tmp_path, milvus_config):
    texts = sample_texts(50)
    make_output(tmp_path / "out", texts)
    cfg = milvus_config(str(tmp_path / "lite.db"), tmp_path / "out", index=FLAT)
    run_load(cfg, progress=False)
    run_load(cfg, progress=False)
    rep = compare(cfg, "previous", [texts[3], "baking bread"], k=4)
    assert all(c.identical and c.overlap == 4 and not (c.entered or c.left or c.moved) for c in rep.comparisons)
    assert rep.summary()["identical"] == 2 and rep.mean_overlap == 1.0


def test_compare_accepts_another_alias_and_leaves_a_released_collection_released(two_loads):
    cfg, first, second, _, _, lite = two_loads
    client = MilvusClient(lite)
    client.create_alias(first.physical, "old_model")
    assert "NotLoad" in str(client.get_load_state(first.physical)["state"])  # released by the alias switch
    rep = compare(cfg, "old_model", [QUERY], k=5)
    assert (rep.other.name, rep.other.collection) == ("old_model", first.physical)
    assert [m.id for m in rep.comparisons[0].left] == ["doc-000004"]
    assert "NotLoad" in str(client.get_load_state(first.physical)["state"])
    assert "Loaded" in str(client.get_load_state(second.physical)["state"])
    client.close()


def test_compare_with_a_missing_collection_names_it_and_lists_what_can_be_compared(two_loads):
    cfg, first, *_ = two_loads
    with pytest.raises(LoadError, match=r"no collection or alias named 'nosuch' \(--compare\) in Milvus at .*; "
                                        rf"collections of alias '{cfg.milvus.collection}' besides the live one, "
                                        rf"newest first: {first.physical}$"):
        compare(cfg, "nosuch", [QUERY])


def test_compare_with_a_collection_not_loaded_by_jinabatch_says_its_model_is_unknown(two_loads):
    cfg, _, _, _, _, lite = two_loads
    client = MilvusClient(lite)
    client.create_collection("handmade", dimension=8)
    client.close()
    with pytest.raises(LoadError, match=r"handmade was not loaded by jinabatch: it has no jinabatch.model property"):
        compare(cfg, "handmade", [QUERY])


def test_compare_with_the_live_collection_itself_is_refused(two_loads):
    cfg, _, second, *_ = two_loads
    for other in (second.physical, cfg.milvus.collection):
        with pytest.raises(ConfigError, match=rf"that is {second.physical}, the collection alias .* points at"):
            compare(cfg, other, [QUERY])


def test_compare_previous_after_the_first_load_says_there_is_none(tmp_path, milvus_config):
    make_output(tmp_path / "out", sample_texts(10))
    cfg = milvus_config(str(tmp_path / "lite.db"), tmp_path / "out")
    run_load(cfg, progress=False)
    with pytest.raises(LoadError, match=r"which was its first load: there is no previous collection to compare with"):
        compare(cfg, "previous", ["x"])


def test_compare_before_any_load_says_to_run_the_load(tmp_path, milvus_config):
    cfg = milvus_config(str(tmp_path / "lite.db"), tmp_path / "out")
    with pytest.raises(LoadError, match=r"run the load first"):
        compare(cfg, "previous", ["x"])


def test_compare_without_queries_or_with_k_below_one_is_a_config_error(two_loads):
    cfg, *_ = two_loads
    with pytest.raises(ConfigError, match=r"no queries to compare"):
        compare(cfg, "previous", [])
    with pytest.raises(ConfigError, match=r"-k must be at least 1"):
        compare(cfg, "previous", [QUERY], k=0)

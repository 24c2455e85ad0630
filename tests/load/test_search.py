"""Search pinned to the collection's embedding: the query task is the query side of the collection's own task."""
from __future__ import annotations

import numpy as np
import pytest

from fixtures_milvus import make_output, sample_texts
from jinabatch.load.search import query_task, search
from jinabatch.load.stage import run_load
from jinabatch.local_api import fakemodel


@pytest.mark.parametrize("model, task, want", [
    ("jina-embeddings-v3", "retrieval.passage", "retrieval.query"),
    ("jina-embeddings-v4", "code.passage", "code.query"),
    ("jina-embeddings-v3", "text-matching", "text-matching"),
    ("jina-embeddings-v3", "classification", "classification"),
    ("jina-embeddings-v3", "", "retrieval.query"),  # a collection without a recorded task: what search always did
    ("jina-embeddings-v2-base-en", "", None),  # the model takes no task
    ("jina-embeddings-v5-text-small", "retrieval.passage", "retrieval.query"),
    ("jina-embeddings-v5-text-nano", "clustering", "clustering"),
    ("jina-code-embeddings-0.5b", "nl2code.passage", "nl2code.query"),
    ("jina-code-embeddings-1.5b", "qa.passage", "qa.query"),
    ("jina-code-embeddings-0.5b", "", "nl2code.query"),  # the family's own query side
    ("jina-embeddings-v6-someday", "retrieval.passage", "retrieval.query"),  # not in the table: by the task's name
    ("jina-embeddings-v6-someday", "", None),  # ...and no task recorded: none sent
])
def test_query_task_is_the_query_side_of_the_collections_task(model, task, want):
    assert query_task(model, task) == want


def test_a_text_matching_collection_is_searched_with_text_matching_query_vectors(tmp_path, milvus_config):
    """Scores equal the cosine of the text-matching query vector — not the retrieval.query one — with the rows'."""
    texts = sample_texts(30)
    vectors = make_output(tmp_path / "out", texts, task="text-matching")
    cfg = milvus_config(str(tmp_path / "lite.db"), tmp_path / "out",
                        index={"type": "FLAT", "metric": "COSINE", "params": {}})
    run_load(cfg, progress=False)
    hits = search(cfg, "baking sourdough bread", k=3)

    def cosines(task):
        q = fakemodel.embed("jina-embeddings-v3", task, 64, ["baking sourdough bread"])[0].astype(np.float64)
        return [float(vectors[h.id].astype(np.float64) @ q / np.linalg.norm(vectors[h.id]) / np.linalg.norm(q))
                for h in hits]

    assert np.allclose([h.score for h in hits], cosines("text-matching"), atol=1e-5)
    assert not np.allclose([h.score for h in hits], cosines("retrieval.query"), atol=1e-3)


def test_the_terminal_view_leaves_out_the_text_hash_and_json_keeps_it():
    """text_hash is incremental-run bookkeeping: not shown in the readable hits, still in the Hit (and --json)."""
    from jinabatch.load.search import Hit, format_hits

    hit = Hit("doc-1", 0.5, {"text_hash": 1234567890123, "text": "a river stone"})
    shown = format_hits([hit])
    assert "text_hash" not in shown and "      text: a river stone" in shown.splitlines()
    assert hit.fields["text_hash"] == 1234567890123

"""Late chunking in the batch job: every request holds one document's chunks, in order, and each vector is
the local server's late-chunking vector for that chunk in that request."""
from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from corpus_gen import DIMS, MODEL, TASK, read_dead_letters, read_output
from jinabatch.embed.driver import run_embed
from jinabatch.jina.probe import PROBE_TEXT
from jinabatch.local_api import fakemodel

pytestmark = pytest.mark.slow


def _documents(folder, n_docs=12, seed=3):
    """Documents of 3-30 chunks of ~150-700 tokens (some far beyond one 8,192-token context), rows shuffled
    within each file so only the order column says the chunk order; one row without a document."""
    rng = random.Random(seed)
    rows = []
    for d in range(n_docs):
        for s in range(rng.randint(3, 30)):
            words = " ".join(rng.choice(["river", "stone", "copper", "lantern", "meadow", "falcon"])
                             for _ in range(rng.randint(150, 700)))
            rows.append({"id": f"d{d}-c{s}", "doc": f"doc-{d}", "seq": s, "text": f"doc {d} chunk {s}: {words}"})
    rows.append({"id": "orphan", "doc": None, "seq": 0, "text": "a chunk of no document"})
    half = len(rows) // 2
    for k, part in enumerate((rows[:half], rows[half:])):
        part = part[:]
        rng.shuffle(part)
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(part), folder / f"part-{k}.parquet", row_group_size=64)
    return rows


def test_requests_hold_one_documents_chunks_in_order_and_vectors_are_exact(ray_local, embed_config,
                                                                           make_jina_server, tmp_path):
    rows = _documents(tmp_path / "c")
    srv = make_jina_server(record_inputs=10_000)
    cfg = embed_config(tmp_path / "c", tmp_path / "out", srv.url,
                       corpus={"columns": ["doc"], "document_column": "doc", "chunk_order_column": "seq",
                               "rows_per_shard": 10_000},
                       jina={"late_chunking": True, "on_too_long": "skip"})
    rep = run_embed(cfg, progress=False)
    assert rep.finished and rep.rows_dead_letter == 1
    assert read_dead_letters(tmp_path / "out").to_pylist()[0]["reason"] == "null document (doc)"
    by_text = {r["text"]: r for r in rows}
    log = [r for r in srv.stats()["inputs_log"] if r["input"] != [PROBE_TEXT]]  # the endpoint check's request
    assert log and all(req["late_chunking"] for req in log)
    want: dict[str, np.ndarray] = {}
    windows_per_doc: dict[str, int] = {}
    for req in log:
        chunks = [by_text[t] for t in req["input"]]
        assert len({c["doc"] for c in chunks}) == 1, "a request mixed documents"
        seqs = [c["seq"] for c in chunks]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"chunks out of order: {seqs}"
        assert sum(fakemodel.count_tokens(t) for t in req["input"]) <= 8192, "a window overflows the context"
        vecs = fakemodel.embed(MODEL, TASK, DIMS, req["input"], late_chunking=True)
        for c, v in zip(chunks, vecs):
            want[c["id"]] = v
        windows_per_doc[chunks[0]["doc"]] = windows_per_doc.get(chunks[0]["doc"], 0) + 1
    assert max(windows_per_doc.values()) > 1, "no document was long enough to need several windows"
    for doc, n in windows_per_doc.items():  # windows of one document cover it without overlap
        assert sum(len(req["input"]) for req in log if by_text[req["input"][0]]["doc"] == doc) == \
            sum(1 for r in rows if r["doc"] == doc)
    out = read_output(tmp_path / "out")
    ids = out.column("id").to_pylist()
    assert sorted(ids) == sorted(r["id"] for r in rows if r["doc"] is not None)
    got = np.asarray(out.column("embedding").to_pylist(), np.float32)
    assert np.array_equal(got, np.stack([want[i] for i in ids]))
    plain = fakemodel.embed(MODEL, TASK, DIMS, [by_text_id["text"] for by_text_id in
                                                  sorted((r for r in rows if r["id"] in ids[:3]),
                                                         key=lambda r: ids.index(r["id"]))])
    assert not np.array_equal(got[:3], plain), "the vectors are not the late-chunking ones"

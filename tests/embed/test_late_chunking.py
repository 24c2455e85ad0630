"""Late chunking in the batch job: every request holds one document's chunks, in order, and each vector is
the local server's late-chunking vector for that chunk in that request."""
from __future__ import annotations

import json
import random
import subprocess

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from corpus_gen import DIMS, MODEL, TASK, read_dead_letters, read_output
from fixtures_ray import KEY_ENV, base_config
from procs import embed_killed_after, job_env, run_killing_one_worker
from jinabatch.config import parse_config
from jinabatch.embed.driver import run_embed
from jinabatch.embed.plan import plan_corpus
from jinabatch.jina.probe import PROBE_TEXT
from jinabatch.local_api import fakemodel
from jinabatch.local_api.server import LocalServer, ServerSettings
from jinabatch.storage import Storage

pytestmark = pytest.mark.slow


def _documents(folder, n_docs=12, seed=3):
    """Documents of 3-30 chunks of ~150-700 tokens (some far beyond one 8,192-token context), written in
    document order over two files (a document crosses the file boundary) with each document's chunks shuffled,
    so only the order column says the chunk order; one row without a document, last."""
    rng = random.Random(seed)
    rows = []
    for d in range(n_docs):
        chunks = []
        for s in range(rng.randint(3, 30)):
            words = " ".join(rng.choice(["river", "stone", "copper", "lantern", "meadow", "falcon"])
                             for _ in range(rng.randint(150, 700)))
            chunks.append({"id": f"d{d}-c{s}", "doc": f"doc-{d}", "seq": s, "text": f"doc {d} chunk {s}: {words}"})
        rng.shuffle(chunks)
        rows += chunks
    rows.append({"id": "orphan", "doc": None, "seq": 0, "text": "a chunk of no document"})
    half = len(rows) // 2
    folder.mkdir(parents=True, exist_ok=True)
    for k, part in enumerate((rows[:half], rows[half:])):
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


# -- documents across shard edges ------------------------------------------------------------------------------

EDGE_ROWS = 20  # rows_per_shard of the runs below: most multiples of 20 fall inside a document of _documents


def _late(corpus, out, url, rows_per_shard: int, **sections) -> dict:
    return base_config(corpus, out, url, corpus={"columns": ["doc"], "document_column": "doc",
                                                 "chunk_order_column": "seq", "rows_per_shard": rows_per_shard},
                       jina={"late_chunking": True, "on_too_long": "skip"}, **sections)


def _vectors(out) -> dict[str, np.ndarray]:
    table = read_output(out)
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)), "an id was written twice"
    return dict(zip(ids, np.asarray(table.column("embedding").to_pylist(), np.float32)))


def _assert_same_vectors(out, reference: dict[str, np.ndarray]) -> None:
    got = _vectors(out)
    assert got.keys() == reference.keys()
    differ = sorted(i for i in got if not np.array_equal(got[i], reference[i]))
    assert not differ, f"{len(differ)} chunk(s) got other vectors than inside one shard, e.g. {differ[:5]}"


@pytest.fixture(scope="module")
def one_shard(ray_local, jina_key, tmp_path_factory):
    """The documents corpus and its run as one shard: the vectors every other cut must reproduce."""
    tmp = tmp_path_factory.mktemp("late-one-shard")
    rows = _documents(tmp / "c")
    position = {}
    for pos, r in enumerate(rows):  # corpus order is the rows' order: part-0, then part-1
        position.setdefault(r["doc"], []).append(pos)
    split_by_old_edges = [d for d, p in position.items() if d and p[0] // EDGE_ROWS != p[-1] // EDGE_ROWS]
    assert len(split_by_old_edges) >= 5, "the corpus must put documents across multiples of EDGE_ROWS"
    with LocalServer(ServerSettings(api_keys=frozenset({jina_key}))) as srv, pytest.MonkeyPatch.context() as mp:
        mp.setenv(KEY_ENV, jina_key)
        rep = run_embed(parse_config(_late(tmp / "c", tmp / "out", srv.url, 10_000)), progress=False)
    assert rep.finished and rep.shards_done == 1
    return {"corpus": tmp / "c", "rows": rows, "vectors": _vectors(tmp / "out"), "report": rep}


def test_a_document_across_an_old_shard_edge_gets_the_vectors_it_gets_inside_one_shard(one_shard, make_jina_server,
                                                                                      jina_key, monkeypatch, tmp_path):
    """rows_per_shard 20 cuts ~10 shards; each edge inside a document moves to its end, so every chunk's vector is
    the one-shard run's; the report counts the documents and those longer than one context window."""
    monkeypatch.setenv(KEY_ENV, jina_key)
    srv = make_jina_server(record_inputs=10_000)
    cfg = parse_config(_late(one_shard["corpus"], tmp_path / "out", srv.url, EDGE_ROWS))
    rep = run_embed(cfg, progress=False)
    assert rep.finished and rep.shards_done > 5
    _assert_same_vectors(tmp_path / "out", one_shard["vectors"])
    plan = plan_corpus(cfg, Storage.open(tmp_path / "out"))
    assert plan.reused and max(s.rows for s in plan.shards) > EDGE_ROWS, "no shard ran over to finish a document"
    ref = one_shard["report"]
    assert rep.documents == ref.documents == 12 and rep.documents_split == ref.documents_split >= 1
    assert rep.rows_embedded == ref.rows_embedded and rep.rows_dead_letter == 1
    doc_of = {r["text"]: r["doc"] for r in one_shard["rows"]}
    for req in srv.stats()["inputs_log"]:
        if req["input"] != [PROBE_TEXT]:
            assert len({doc_of[t] for t in req["input"]}) == 1, "a request mixed documents"


def test_a_killed_worker_keeps_whole_documents_and_their_vectors(one_shard, jina_key, monkeypatch, tmp_path):
    """SIGKILL a shard's worker mid-run: Ray reruns the shard with the same cut, and every vector is the one-shard
    run's."""
    monkeypatch.setenv(KEY_ENV, jina_key)
    with LocalServer(ServerSettings(api_keys=frozenset({jina_key}), latency_ms=150)) as srv:
        cfg = parse_config(_late(one_shard["corpus"], tmp_path / "out", srv.url, EDGE_ROWS))
        rep, killed = run_killing_one_worker(lambda: run_embed(cfg, progress=False), lambda: srv.stats()["ok"] >= 4)
    assert killed and killed[0].startswith("ray::embed shard-"), "no shard worker was killed"
    assert rep.finished and rep.documents == 12
    _assert_same_vectors(tmp_path / "out", one_shard["vectors"])


def test_a_resumed_run_keeps_whole_documents_and_their_vectors(one_shard, make_jina_server, jina_key, tmp_path):
    """SIGKILL jobs/embed.py once some shards are written; the rerun sends only the other shards' chunks, and
    the output and the report's document counts equal the one-shard run's."""
    srv = make_jina_server(latency_ms=150, record_inputs=10_000)
    out = tmp_path / "out"
    data = _late(one_shard["corpus"], out, srv.url, EDGE_ROWS)
    cmd, done = embed_killed_after(data, tmp_path, jina_key)
    plan = plan_corpus(parse_config(data), Storage.open(out))
    assert plan.reused and 2 <= len(done) < len(plan.shards), f"kill came too late: {sorted(done)}"
    text_at = {pos: r["text"] for pos, r in enumerate(one_shard["rows"])}
    finished = {text_at[p] for s in plan.shards if s.name in done for p in range(s.start, s.stop)}
    srv.reset_stats()
    p = subprocess.run(cmd, env=job_env(jina_key), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    sent = {t for req in srv.stats()["inputs_log"] for t in req["input"]}
    assert sent and not sent & finished, "the rerun sent chunks of a finished shard again"
    _assert_same_vectors(out, one_shard["vectors"])
    rep = json.loads((out / "_report.json").read_text())
    ref = one_shard["report"]
    assert rep["shards_skipped"] == len(done) and rep["finished"]
    assert (rep["documents"], rep["documents_split"]) == (ref.documents, ref.documents_split)

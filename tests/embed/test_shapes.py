"""Shards whatever the corpus looks like, end to end: one giant row group, hundreds of tiny files, a mix.

Real local Ray and real HTTP to the local Jina-compatible server; every vector is checked against what the
server must return for its row's text.
"""
from __future__ import annotations


import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from corpus_gen import assert_vectors_match, read_output
from jinabatch.embed.driver import run_embed
from jinabatch.observe.records import read_progress
from jinabatch.local_api import fakemodel
from jinabatch.storage import Storage
from procs import run_killing_one_worker

pytestmark = pytest.mark.slow
WORDS = "river stone cloud pepper engine violin harbor meadow lantern quartz falcon orchard".split()


def _rows(n: int, start: int = 0) -> pa.Table:
    ids = list(range(start, start + n))
    return pa.table({"id": pa.array(ids, pa.int64()),
                     "text": [f"r{i} " + " ".join(WORDS[(i * 5 + k) % len(WORDS)] for k in range(6)) for i in ids]})


def _check(out, table: pa.Table) -> None:
    got = read_output(out)
    ids = got.column("id").to_pylist()
    assert len(ids) == len(set(ids)) and sorted(ids) == sorted(table.column("id").to_pylist())
    assert_vectors_match(got, dict(zip(table.column("id").to_pylist(), table.column("text").to_pylist())))


def test_one_giant_row_group_is_cut_into_shards_that_both_workers_run(ray_local, embed_config, make_jina_server,
                                                                       tmp_path):
    """200,000 rows in one row group at 5,000 per shard: 40 shards, the two workers busy side by side, every
    vector exact, and a worker killed mid-shard redoes only its own shard's rows."""
    table = _rows(200_000)
    (tmp_path / "c").mkdir()
    pq.write_table(table, tmp_path / "c" / "big.parquet", row_group_size=1_000_000)
    srv = make_jina_server(latency_ms=40)  # a shard takes long enough for side-by-side work to show
    out = tmp_path / "out"
    cfg = embed_config(tmp_path / "c", out, srv.url, corpus={"columns": [], "rows_per_shard": 5000})
    # once the run is going, SIGKILL one shard worker mid-shard
    rep, killed = run_killing_one_worker(lambda: run_embed(cfg, progress=False), lambda: srv.stats()["ok"] >= 40)
    assert rep.finished and rep.shards_total == rep.shards_done == 40 and rep.rows_embedded == 200_000
    _check(out, table)
    assert killed, "no shard worker was killed"
    # the retried shard's rows were sent twice at most: the server's spend exceeds the corpus's by < one shard
    text = table.column("text").to_pylist()
    corpus_tokens = sum(fakemodel.count_tokens(s) for s in text)
    shard_tokens = max(sum(fakemodel.count_tokens(s) for s in text[k:k + 5000]) for k in range(0, 200_000, 5000))
    assert corpus_tokens <= srv.stats()["tokens"] < corpus_tokens + shard_tokens
    records = [r for r in read_progress(Storage.open(out)) if r.get("status") == "done"]
    lanes = {r["lane"] for r in records}
    assert lanes == {0, 1}, lanes
    spans = sorted((r["finished"] - r["seconds"], r["finished"]) for r in records)
    union, end = 0.0, float("-inf")
    for a, b in spans:  # length of the union of the shards' intervals
        union += max(0.0, b - max(a, end))
        end = max(end, b)
    busy = sum(b - a for a, b in spans) / union  # 1.0 = one after another, 2.0 = both workers all the time
    assert busy >= 1.5, f"the shards ran one after another, not side by side (average {busy:.2f} in flight)"


def test_many_tiny_files_are_grouped_and_cost_the_requests_of_one_file(ray_local, embed_config, make_jina_server,
                                                                       tmp_path):
    """6,000 rows as 300 files of 20 rows: 6 shards at 1,000, and as many requests as the same rows in one file."""
    table = _rows(6000)
    for k in range(0, 6000, 20):
        (tmp_path / "tiny").mkdir(exist_ok=True)
        pq.write_table(table.slice(k, 20), tmp_path / "tiny" / f"part-{k // 20:04d}.parquet")
    (tmp_path / "one").mkdir()
    pq.write_table(table, tmp_path / "one" / "all.parquet", row_group_size=1000)
    requests = {}
    for name in ("tiny", "one"):
        srv = make_jina_server()
        cfg = embed_config(tmp_path / name, tmp_path / f"out-{name}", srv.url,
                           corpus={"columns": [], "rows_per_shard": 1000})
        rep = run_embed(cfg, progress=False)
        assert rep.finished and rep.shards_total == 6
        _check(tmp_path / f"out-{name}", table)
        requests[name] = srv.stats()["requests"]
    assert requests["tiny"] <= requests["one"] + 6, requests  # at most one extra request per shard


def test_a_mix_of_a_big_row_group_and_tiny_files_in_one_corpus(ray_local, embed_config, jina_server, tmp_path):
    """Tiny files before and after a 12,000-row row group: shards of exactly 2,500 rows, every row once, exact."""
    parts = [_rows(30, 0), _rows(12_000, 100), *[_rows(7, 20_000 + 10 * k) for k in range(20)]]
    (tmp_path / "c").mkdir()
    pq.write_table(parts[0], tmp_path / "c" / "a.parquet")
    pq.write_table(parts[1], tmp_path / "c" / "b.parquet", row_group_size=100_000)
    for k, p in enumerate(parts[2:]):
        pq.write_table(p, tmp_path / "c" / f"c{k:02d}.parquet")
    cfg = embed_config(tmp_path / "c", tmp_path / "out", jina_server.url, corpus={"columns": [], "rows_per_shard": 2500})
    rep = run_embed(cfg, progress=False)
    assert rep.finished and rep.shards_total == 5 and rep.rows_embedded == 30 + 12_000 + 140
    sizes = sorted(pq.read_metadata(f).num_rows for f in (tmp_path / "out" / "shards").glob("shard-*.parquet"))
    assert sizes == [2170, 2500, 2500, 2500, 2500]
    _check(tmp_path / "out", pa.concat_tables(parts))

"""End to end with real local Ray, real HTTP to the local Jina-compatible server and a real Milvus: a corpus whose
carried columns have nulls and a timestamp and a date column goes through the embed stage (which writes the dates
as ISO text in the shards) and loads; and a column the load target cannot hold is refused before any request."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pymilvus import MilvusClient

from corpus_gen import read_output
from fixtures_milvus import carried_sample, sample_texts
from fixtures_ray import KEY_ENV, base_config
from jinabatch.embed.columns import SOURCE_TYPE
from jinabatch.embed.driver import run_embed
from jinabatch.load.search import search
from jinabatch.load.stage import run_load

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
N = 60
COLUMNS = ["title", "n", "score", "flag", "published", "day"]


def _corpus(folder: Path, **more) -> tuple[list[str], dict[str, list]]:
    """Two files of 30 rows (row groups of 10), int ids 0..59; returns (texts, the values Milvus must give back)."""
    cols, want = carried_sample(N)
    texts = sample_texts(N)
    table = pa.table({"id": pa.array(range(N), pa.int64()), "text": texts, **cols, **more})
    folder.mkdir(parents=True)
    for k in range(2):
        pq.write_table(table.slice(30 * k, 30), folder / f"part-{k}.parquet", row_group_size=10)
    return texts, want


def _toml(data: dict) -> str:
    def val(v):
        return json.dumps(v) if not isinstance(v, bool) else str(v).lower()
    return "\n".join(f"[{s}]\n" + "\n".join(f"{k} = {val(v)}" for k, v in kv.items()) + "\n" for s, kv in data.items())


def _run_job(cfg: dict, tmp_path: Path, key: str) -> subprocess.CompletedProcess:
    path = tmp_path / "job.toml"
    path.write_text(_toml(cfg))
    return subprocess.run([sys.executable, "jobs/run.py", str(path), "--no-progress", "--query", "anything"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, KEY_ENV: key, "RAY_AUTH_MODE": "disabled"})


@pytest.mark.milvus
def test_embed_then_bulk_load_into_the_server_carries_nulls_and_dates_as_written(
        ray_local, embed_config, jina_server, milvus_server, tmp_path):
    texts, want = _corpus(tmp_path / "corpus")
    cfg = embed_config(tmp_path / "corpus", tmp_path / "out", jina_server.url, corpus={"columns": COLUMNS},
                       milvus={"uri": milvus_server.uri, "collection": "carried_e2e"})
    rep = run_embed(cfg, progress=False)
    assert rep.finished and rep.rows_embedded == N and rep.rows_dead_letter == 0
    shards = read_output(tmp_path / "out")  # what bulk import reads: dates already ISO text, nulls still null
    schema = pq.read_schema(sorted((tmp_path / "out" / "shards").glob("shard-*.parquet"))[0])
    assert schema.field("published").type == pa.string() and schema.field("day").type == pa.string()
    assert schema.field("published").metadata[SOURCE_TYPE] == b"timestamp[us, tz=UTC]"
    by_id = {r["id"]: r for r in shards.to_pylist()}
    assert all(by_id[i][c] == want[c][i] for i in range(N) for c in COLUMNS)

    load = run_load(cfg, progress=False)
    assert load.mode == "bulk" and load.rows == N and load.carried["day"].startswith("key of the dynamic field")
    client = MilvusClient(milvus_server.uri)
    rows = client.query("carried_e2e", filter="", output_fields=["id", *COLUMNS], limit=1000, consistency_level="Strong")
    assert {r["id"]: {c: r.get(c) for c in COLUMNS} for r in rows} == {
        i: {c: want[c][i] for c in COLUMNS} for i in range(N)}
    in_range = client.query("carried_e2e", filter='published >= "2024-01-10" and published < "2024-01-20"',
                            output_fields=["id"], limit=1000, consistency_level="Strong")
    assert sorted(r["id"] for r in in_range) == [i for i in range(9, 19) if i % 6]
    client.close()
    hit = search(cfg, texts[12], k=1)[0]
    assert hit.id == 12 and hit.fields["published"] is None and hit.fields["day"] == "2023-12-13"


def test_run_job_on_lite_loads_nulls_and_dates_and_says_where_each_column_goes(jina_server, jina_key, tmp_path):
    """jobs/run.py: the plan-time summary, then embed, load (nullable fields on Lite) and search — exit 0."""
    texts, want = _corpus(tmp_path / "corpus")
    db = tmp_path / "lite.db"
    cfg = base_config(tmp_path / "corpus", tmp_path / "out", jina_server.url, corpus={"columns": COLUMNS},
                      milvus={"uri": str(db), "collection": "carried_job"})
    r = _run_job(cfg, tmp_path, jina_key)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout.splitlines()
    assert out[0].startswith("load target: Milvus Lite milvus_lite-") and out[0].endswith("fill: insert")
    assert "  published: timestamp[us, tz=UTC] as string, 10 null(s) → nullable field" in out
    assert any(line.startswith(f"load: {N} rows into carried_job__") for line in out)
    client = MilvusClient(str(db))
    client.load_collection(client.describe_alias("carried_job")["collection_name"])  # Lite reopens released
    rows = client.query("carried_job", filter="score > 5", output_fields=["id", "score", "day"], limit=1000)
    assert sorted(r["id"] for r in rows) == [i for i in range(21, N) if i % 3]
    assert {r["id"]: r["day"] for r in rows}[23] == "2023-12-24"
    client.close()


def test_run_job_refuses_a_column_the_target_cannot_hold_before_any_request(make_jina_server, jina_key, tmp_path):
    """A carried text value over Milvus's 65,535 bytes: exit 1 naming file, row, column — the server saw nothing."""
    body = ["fine"] * N
    body[41] = "y" * 70_000
    _corpus(tmp_path / "corpus", body=body)
    srv = make_jina_server()
    cfg = base_config(tmp_path / "corpus", tmp_path / "out", srv.url, corpus={"columns": [*COLUMNS, "body"]},
                      milvus={"uri": str(tmp_path / "lite.db"), "collection": "refused"})
    r = _run_job(cfg, tmp_path, jina_key)
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: CorpusError: ") and "part-1.parquet: row 11 of carried column 'body' holds " \
        "70000 bytes" in last and "corpus.columns" in last
    assert srv.stats()["requests"] == 0
    assert not (tmp_path / "out" / "shards").exists()

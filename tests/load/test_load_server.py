"""The load stage against the real local Milvus standalone server: bulk import, alias, search, failures.

One server for the session (``milvus_server``); each test uses its own alias. Bulk import on this
server takes a few seconds per shard, so the folders here are small and have 2–3 shards.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pymilvus import MilvusClient

from fixtures_milvus import make_output, sample_texts
from jinabatch.errors import LoadError
from jinabatch.load.stage import run_load
from jinabatch.load.milvus import alias_target, physicals
from jinabatch.load.search import search

pytestmark = [pytest.mark.slow, pytest.mark.milvus]


def _rows(client, alias, fields=("id", "embedding", "text")):
    rows = client.query(alias, filter="", output_fields=list(fields), limit=16384, consistency_level="Strong")
    return {r["id"]: r for r in rows}


def test_embedded_uri_bulk_imports_every_vector_exactly_and_search_finds_rows_by_their_text(
        tmp_path, milvus_server, milvus_config):
    """uri = "embedded" reuses the running server (left running); auto mode bulk-imports; vectors equal."""
    texts = sample_texts(250)
    extra = {"n": pa.array(range(250), pa.int64()), "w": pa.array(range(250), pa.int32()),
             "score": [i / 4 for i in range(250)], "f": pa.array([i / 8 for i in range(250)], pa.float32()),
             "even": [i % 2 == 0 for i in range(250)]}
    vectors = make_output(tmp_path / "out", texts, rows_per_shard=125, extra=extra)
    cfg = milvus_config("embedded", tmp_path / "out", port=milvus_server.port,
                        data_dir=str(tmp_path / "never-used"))
    rep = run_load(cfg, progress=False)
    assert (rep.mode, rep.rows, rep.uri, rep.verified_ids) == ("bulk", 250, milvus_server.uri, 200)
    assert milvus_server.running and not (tmp_path / "never-used").exists()
    client = MilvusClient(milvus_server.uri)
    assert alias_target(client, cfg.milvus.collection) == rep.physical
    rows = _rows(client, cfg.milvus.collection, ("id", "embedding", "text", *extra))
    assert rows.keys() == vectors.keys()
    for i, v in vectors.items():
        assert np.array_equal(np.asarray(rows[i]["embedding"], np.float32), v), i
    r = rows["doc-000201"]
    assert (r["text"], r["n"], r["w"], r["score"], r["f"], r["even"]) == (texts[201], 201, 201, 50.25, 25.125, False)
    for i in (3, 201):
        hits = search(cfg, texts[i], k=3)
        assert hits[0].id == f"doc-{i:06d}" and hits[0].fields["n"] == i
    client.close()


def test_rerun_does_not_duplicate_and_rollback_returns_to_the_previous_load(tmp_path, milvus_server, milvus_config):
    make_output(tmp_path / "out", sample_texts(80), rows_per_shard=40)
    cfg = milvus_config(milvus_server.uri, tmp_path / "out")
    first = run_load(cfg, progress=False)
    second = run_load(cfg, progress=False)
    client = MilvusClient(milvus_server.uri)
    assert len(_rows(client, cfg.milvus.collection)) == 80
    assert second.previous == first.physical and second.physical != first.physical
    back = run_load(cfg, rollback=True, progress=False)
    assert (back.physical, back.previous) == (first.physical, second.physical)
    assert alias_target(client, cfg.milvus.collection) == first.physical
    assert len(_rows(client, cfg.milvus.collection)) == 80
    client.close()


def test_failed_import_keeps_the_alias_on_the_old_collection_and_says_why(tmp_path, milvus_server, milvus_config):
    make_output(tmp_path / "good", sample_texts(30))
    cfg = milvus_config(milvus_server.uri, tmp_path / "good")
    good = run_load(cfg, progress=False)
    make_output(tmp_path / "bad", sample_texts(30))
    shard = tmp_path / "bad" / "shards" / "shard-00000.parquet"
    t = pq.read_table(shard)  # vectors of 32 floats under a report and footer that say 64
    short = pa.array([v[:32] for v in t.column("embedding").to_pylist()], pa.list_(pa.float32()))
    pq.write_table(t.set_column(1, "embedding", short).replace_schema_metadata(t.schema.metadata), shard)
    bad = milvus_config(milvus_server.uri, tmp_path / "bad", collection=cfg.milvus.collection)
    with pytest.raises(LoadError, match=r"shard-00000\.parquet: Milvus import task \d+ failed: .*dim") as err:
        run_load(bad, progress=False)
    assert "check that the shard matches the collection" in str(err.value)
    client = MilvusClient(milvus_server.uri)
    assert alias_target(client, cfg.milvus.collection) == good.physical
    assert [p.name for p in physicals(client, cfg.milvus.collection)] == [good.physical]
    assert len(_rows(client, cfg.milvus.collection)) == 30
    client.close()


def test_job_started_embedded_server_is_stopped_after_and_its_collection_persists(
        tmp_path, milvus_server, milvus_config):
    """With no server running, uri = "embedded" starts one on data_dir, stops it; a restart still serves the load
    and still knows it was verified (keep_previous and rollback work across restarts)."""
    from jinabatch.load.server import milvus_answers

    make_output(tmp_path / "out", sample_texts(40))
    cfg = milvus_config("embedded", tmp_path / "out", port=milvus_server.port, data_dir=str(milvus_server.data_dir))
    milvus_server.stop()  # one server per machine: the job starts its own on the same data dir
    try:
        assert not milvus_answers(milvus_server.port)
        rep = run_load(cfg, progress=False)
        assert rep.mode == "bulk" and not milvus_answers(milvus_server.port)
    finally:
        milvus_server.start()
    client = MilvusClient(milvus_server.uri)
    assert alias_target(client, cfg.milvus.collection) == rep.physical
    client.load_collection(rep.physical)
    assert len(_rows(client, cfg.milvus.collection)) == 40
    client.close()
    # the restart must not forget that rep.physical was verified: a new load keeps it, rollback returns to it
    # (the restarted server may have moved to the next port while the old one was still held)
    cfg = cfg.model_copy(update={"milvus": cfg.milvus.model_copy(update={"port": milvus_server.port})})
    again = run_load(cfg, progress=False)
    assert again.previous == rep.physical and again.dropped == []
    back = run_load(cfg, rollback=True, progress=False)
    assert back.physical == rep.physical


def test_s3_output_into_the_embedded_server_on_local_storage_is_downloaded_for_the_import_and_removed(
        tmp_path, milvus_server, milvus_config, s3_bucket, monkeypatch):
    """output.path on s3://, the embedded server on local storage (no milvus.bucket): it reads only paths on this
    machine, so the shards are copied to <data_dir>/_import/<collection>/, imported by absolute path, removed."""
    import boto3

    from jinabatch.load import milvus as milvus_mod

    bucket = s3_bucket()
    vectors = make_output(tmp_path / "out", sample_texts(90), rows_per_shard=45)
    for f in sorted((tmp_path / "out").rglob("*")):
        if f.is_file():
            boto3.client("s3").upload_file(str(f), bucket, f"run/{f.relative_to(tmp_path / 'out').as_posix()}")
    seen, real = [], milvus_mod._submit
    data_dir = tmp_path / "data"

    def submit(target, collection, file):
        seen.append((file, Path(file).is_file()))  # the copy is on this disk while Milvus reads it
        return real(target, collection, file)

    monkeypatch.setattr(milvus_mod, "_submit", submit)
    cfg = milvus_config("embedded", f"s3://{bucket}/run", port=milvus_server.port, data_dir=str(data_dir))
    rep = run_load(cfg, progress=False)
    folder = data_dir.resolve() / "_import" / rep.physical
    assert sorted(seen) == [(str(folder / f"shard-0000{i}.parquet"), True) for i in range(2)]
    assert rep.import_files["placement"] == "download" and rep.import_files["copies"]["how"] == "download"
    assert not (data_dir / "_import").exists(), "the downloaded copies were not removed"
    rows = _rows(MilvusClient(milvus_server.uri), cfg.milvus.collection)
    assert rows.keys() == vectors.keys()
    assert all(np.array_equal(np.asarray(rows[i]["embedding"], np.float32), v) for i, v in vectors.items())


def test_a_second_embedded_server_that_cannot_start_is_given_up_in_seconds_naming_the_cause(milvus_server, tmp_path):
    """Two embedded servers collide on Milvus's fixed internal ports: the second exits at once. Its start is given
    up then with the error from its log — not after the package's 180 s readiness wait, for which a process that
    has exited still counts as running — and the first keeps serving."""
    import time

    from jinabatch.load.server import EmbeddedServer, milvus_answers

    second = EmbeddedServer(tmp_path / "second", port=milvus_server.port + 63)
    t0 = time.monotonic()
    with pytest.raises(LoadError, match=r"did not start \(it exited with code -?\d+: .*address already in use\)"):
        second.start()
    assert time.monotonic() - t0 < 60 and not second.running
    assert milvus_answers(milvus_server.port)


def test_a_quick_restart_on_the_same_data_dir_waits_out_the_stopped_servers_sessions(
        tmp_path, milvus_server, milvus_config, monkeypatch):
    """Stopped and started again at once (make backfill does it four times), the server must not hand an import to
    the data node of the stopped process, whose etcd session is still registered: that import stays "Started" until
    Milvus expires it 15 min later. The start waits the sessions out; every file then imports within seconds."""
    import json
    import time

    from jinabatch.load import stage
    from jinabatch.load.server import SESSION_TTL, STATE_FILE

    vectors = make_output(tmp_path / "out", sample_texts(60), rows_per_shard=15)
    real = stage.bulk_import
    monkeypatch.setattr(stage, "bulk_import", lambda *a, **k: real(*a, **{**k, "timeout": 90.0}))
    milvus_server.stop()
    stopped = json.loads((milvus_server.data_dir / STATE_FILE).read_text())
    assert stopped["session_ttl"] == SESSION_TTL and stopped["stopped_at"] <= time.time()
    milvus_server.start()
    assert time.time() >= stopped["stopped_at"] + SESSION_TTL, "the start did not wait for the old sessions"
    cfg = milvus_config(milvus_server.uri, tmp_path / "out")
    rep = run_load(cfg, progress=False)
    assert rep.rows == 60
    rows = _rows(MilvusClient(milvus_server.uri), cfg.milvus.collection)
    assert rows.keys() == vectors.keys()

"""The load stage with a Milvus on object storage: the embedded Milvus keeping its data in a bucket of the
session's SeaweedFS (``milvus.bucket``), real bulk imports, every vector checked against the vector the local
Jina server gives its text (``make_output`` / ``corpus_gen`` compute it with the same deterministic model).

* output inside the Milvus bucket → imported by key where it is, nothing copied;
* output in another bucket, or on local disk → copied into the Milvus bucket under ``milvus.import_root``
  (server-side copy on one endpoint, else upload), imported, the copies removed — after a verified load and
  after a failed one;
* carried columns holding nulls (this 2.3 server has no nullable fields) → ``$meta`` import copies written
  into the Milvus bucket and bulk-imported (no fallback to insert);
* ``jobs/run.py`` with ``uri = "embedded"`` and ``milvus.bucket`` starts the S3-backed server itself, as a user
  would, and the S3 secret is in no output, object, report or Milvus file.

The S3-backed server and the session's local-storage one take turns (``milvus_slot`` in fixtures_milvus):
this module holds the slot from its first test to its last.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pymilvus import MilvusClient

from corpus_gen import expected_vectors, make_corpus
from fixtures_milvus import S3_MILVUS_PORT, carried_sample, make_output, sample_texts
from fixtures_ray import base_config
from fixtures_s3 import S3_KEY_ID, S3_SECRET
from jinabatch.errors import LoadError
from jinabatch.load import milvus
from jinabatch.load.milvus import alias_target, physicals
from jinabatch.load.search import search
from jinabatch.load.server import SERVER_ID_DIR, BucketStorage, EmbeddedServer
from jinabatch.config import StorageSettings
from jinabatch.load.stage import run_load
from procs import job_env, toml_of

pytestmark = [pytest.mark.slow, pytest.mark.milvus]
ROOT = Path(__file__).resolve().parents[2]
DYNAMIC = "key of the dynamic field (a null is an absent key)"


def _upload(folder: Path, bucket: str, prefix: str) -> None:
    """Every file of a local output folder (its stray temp file too) under ``prefix``, as the embed stage leaves it."""
    client = boto3.client("s3")
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        client.upload_file(str(f), bucket, f"{prefix}/{f.relative_to(folder).as_posix()}")


def _keys(bucket: str, prefix: str = "") -> list[str]:
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def _get(bucket: str, key: str) -> bytes:
    return boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()


def _spy_imports(monkeypatch, bucket: str) -> dict[str, int]:
    """Record every file the server is asked to import, with the size of that object *at that moment* in the
    Milvus bucket (the copies must exist while Milvus reads them)."""
    seen: dict[str, int] = {}
    real = milvus._submit

    def submit(target, collection, file):
        seen[file] = boto3.client("s3").head_object(Bucket=bucket, Key=file)["ContentLength"]
        return real(target, collection, file)

    monkeypatch.setattr(milvus, "_submit", submit)
    return seen


def _check_vectors(uri: str, alias: str, vectors: dict, fields=("id", "embedding")) -> dict:
    client = MilvusClient(uri)
    rows = client.query(alias, filter="", output_fields=list(fields), limit=16384, consistency_level="Strong")
    client.close()
    got = {r["id"]: r for r in rows}
    assert got.keys() == vectors.keys()
    for i, v in vectors.items():
        assert np.array_equal(np.asarray(got[i]["embedding"], np.float32), v), i
    return got


def test_output_inside_the_milvus_bucket_is_imported_by_key_where_it_is_with_no_copy(
        tmp_path, milvus_s3_server, milvus_config, monkeypatch, caplog):
    """s3://<milvus.bucket>/runs/a: the server is given keys runs/a/shards/shard-N.parquet (no bucket, no s3://,
    no rootPath); nothing is written but the reports; count and vectors exact, alias swapped, search answers."""
    bucket = milvus_s3_server.bucket.bucket
    texts = sample_texts(150)
    vectors = make_output(tmp_path / "out", texts, rows_per_shard=50)
    _upload(tmp_path / "out", bucket, "runs/a")
    before = _keys(bucket, "runs/a/")
    seen = _spy_imports(monkeypatch, bucket)
    cfg = milvus_config(milvus_s3_server.uri, f"s3://{bucket}/runs/a", bucket=bucket)
    with caplog.at_level(logging.INFO):
        rep = run_load(cfg, progress=False)
    assert (rep.mode, rep.rows, rep.verified_ids) == ("bulk", 150, 150)
    assert sorted(seen) == [f"runs/a/shards/shard-0000{i}.parquet" for i in range(3)]
    assert rep.import_files == {"read_from": f"s3://{bucket}/runs/a/shards", "placement": "in bucket"}
    assert "copy files" not in [p["phase"] for p in rep.phases]
    assert sorted(set(_keys(bucket, "runs/a/")) - set(before)) == ["runs/a/_load_report.json", "runs/a/_report.html"]
    assert _keys(bucket, "files/"), "the server keeps no data in its bucket: it is not on object storage"
    client = MilvusClient(milvus_s3_server.uri)
    assert alias_target(client, cfg.milvus.collection) == rep.physical
    client.close()
    _check_vectors(milvus_s3_server.uri, cfg.milvus.collection, vectors)
    for i in (7, 142):
        assert search(cfg, texts[i], k=3)[0].id == f"doc-{i:06d}"
    written = json.loads(_get(bucket, "runs/a/_load_report.json"))
    assert written["physical"] == rep.physical and written["import_files"]["placement"] == "in bucket"
    page = _get(bucket, "runs/a/_report.html").decode()
    assert "<h2>Load into Milvus</h2>" in page and f"s3://{bucket}/runs/a/shards (in place, no copy)" in page
    assert S3_SECRET not in caplog.text and S3_SECRET.encode() not in _get(bucket, "runs/a/_load_report.json")


def test_output_in_another_bucket_is_copied_server_side_imported_and_the_copies_removed(
        tmp_path, milvus_s3_server, milvus_config, s3_bucket, monkeypatch):
    """Another bucket on the same endpoint: each shard is copied by the store itself (nothing streams through
    this machine) to <import_root>/<collection>/ in the Milvus bucket, imported from there, then removed; copies
    a killed load of the same alias left there are removed too (another alias's are not touched)."""
    import jinabatch.storage

    bucket, other = milvus_s3_server.bucket.bucket, s3_bucket()
    vectors = make_output(tmp_path / "out", sample_texts(150), rows_per_shard=50)
    _upload(tmp_path / "out", other, "run")
    source = {k: len(_get(other, k)) for k in _keys(other, "run/shards/") if k.endswith(".parquet")}

    def no_streaming(*a, **k):
        raise AssertionError("the copy went through this machine")

    monkeypatch.setattr(jinabatch.storage.pafs, "copy_files", no_streaming)
    seen = _spy_imports(monkeypatch, bucket)
    cfg = milvus_config(milvus_s3_server.uri, f"s3://{other}/run", bucket=bucket, import_root="staging/jb")
    alias = cfg.milvus.collection
    killed = f"staging/jb/{alias}__jina_embeddings_v3_64d_20200101T000000000/shard-00000.parquet"
    kept = [f"staging/jb/{alias}__v2__jina_embeddings_v3_64d_20200101T000000000/shard-00000.parquet",
            "staging/jb/notes/readme.txt"]
    for key in [killed, *kept]:
        boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=b"left behind")
    rep = run_load(cfg, progress=False)
    prefix = f"staging/jb/{rep.physical}"
    assert seen == {f"{prefix}/{k.rsplit('/', 1)[1]}": n for k, n in source.items()}
    files = rep.import_files
    assert (files["read_from"], files["placement"]) == (f"s3://{bucket}/{prefix}", "copy")
    assert {k: files["copies"][k] for k in ("files", "how", "removed")} == {
        "files": 3, "how": "server-side copy", "removed": True}
    assert [p["phase"] for p in rep.phases][:3] == ["create", "copy files", "fill"]
    assert "remove copies" in [p["phase"] for p in rep.phases]
    assert _keys(bucket, "staging/") == sorted(kept), "import copies were left in the Milvus bucket"
    assert {k: len(_get(other, k)) for k in _keys(other, "run/shards/") if k.endswith(".parquet")} == source
    _check_vectors(milvus_s3_server.uri, cfg.milvus.collection, vectors)


def test_local_output_with_nulls_goes_into_the_bucket_as_meta_copies_and_is_bulk_imported(
        tmp_path, milvus_s3_server, milvus_config, monkeypatch):
    """Local output, carried columns holding nulls, a 2.3 server: import copies with $meta are written into the
    Milvus bucket (under the default import root), bulk-imported — not inserted — and removed; nulls stay null."""
    bucket = milvus_s3_server.bucket.bucket
    cols, want = carried_sample(60)
    vectors = make_output(tmp_path / "out", sample_texts(60), rows_per_shard=30, extra=cols)
    seen = _spy_imports(monkeypatch, bucket)
    cfg = milvus_config(milvus_s3_server.uri, tmp_path / "out", bucket=bucket, mode="bulk")
    rep = run_load(cfg, progress=False)
    assert rep.mode == "bulk" and rep.carried["title"] == DYNAMIC and rep.carried["text"] == "field"
    assert sorted(seen) == [f"jinabatch-import/{rep.physical}/shard-0000{i}.parquet" for i in range(2)]
    assert rep.import_files["copies"]["how"] == "import copies with $meta, written"
    assert _keys(bucket, "jinabatch-import/") == [] and not (tmp_path / "out" / "_import").exists()
    rows = _check_vectors(milvus_s3_server.uri, cfg.milvus.collection, vectors, ("id", "embedding", *want))
    ids = sorted(vectors)
    assert {c: [rows[i].get(c) for i in ids] for c in want} == want


def test_output_in_the_bucket_with_nulls_gets_its_meta_copies_beside_it_in_the_bucket(
        tmp_path, milvus_s3_server, milvus_config, monkeypatch):
    """In-bucket output whose carried columns hold nulls: the $meta copies go to <prefix>/_import/<collection>/
    in the same bucket (what the server can read), and are removed after the load."""
    bucket = milvus_s3_server.bucket.bucket
    cols, want = carried_sample(40)
    vectors = make_output(tmp_path / "out", sample_texts(40), rows_per_shard=20, extra=cols)
    _upload(tmp_path / "out", bucket, "runs/nulls")
    seen = _spy_imports(monkeypatch, bucket)
    cfg = milvus_config(milvus_s3_server.uri, f"s3://{bucket}/runs/nulls", bucket=bucket)
    rep = run_load(cfg, progress=False)
    assert sorted(seen) == [f"runs/nulls/_import/{rep.physical}/shard-0000{i}.parquet" for i in range(2)]
    assert _keys(bucket, "runs/nulls/_import/") == []
    rows = _check_vectors(milvus_s3_server.uri, cfg.milvus.collection, vectors, ("id", "embedding", *want))
    assert {c: [rows[i].get(c) for i in sorted(vectors)] for c in want} == want


def test_failed_load_removes_its_copies_and_leaves_the_alias_where_it_was(
        tmp_path, milvus_s3_server, milvus_config, s3_bucket):
    bucket, other = milvus_s3_server.bucket.bucket, s3_bucket()
    make_output(tmp_path / "good", sample_texts(30))
    cfg = milvus_config(milvus_s3_server.uri, tmp_path / "good", bucket=bucket)
    good = run_load(cfg, progress=False)
    make_output(tmp_path / "bad", sample_texts(60), rows_per_shard=30)
    shard = tmp_path / "bad" / "shards" / "shard-00001.parquet"
    t = pq.read_table(shard)  # vectors of 32 floats under a report and footer that say 64
    short = pa.array([v[:32] for v in t.column("embedding").to_pylist()], pa.list_(pa.float32()))
    pq.write_table(t.set_column(1, "embedding", short).replace_schema_metadata(t.schema.metadata), shard)
    _upload(tmp_path / "bad", other, "bad")
    bad = milvus_config(milvus_s3_server.uri, f"s3://{other}/bad", bucket=bucket, collection=cfg.milvus.collection)
    with pytest.raises(LoadError, match=rf"s3://{other}/bad/shards/shard-00001\.parquet: Milvus import task \d+ "
                                        r"failed: .*dim"):
        run_load(bad, progress=False)
    assert _keys(bucket, "jinabatch-import/") == [], "a failed load left its copies in the Milvus bucket"
    client = MilvusClient(milvus_s3_server.uri)
    assert alias_target(client, cfg.milvus.collection) == good.physical
    assert [p.name for p in physicals(client, cfg.milvus.collection)] == [good.physical]
    client.close()


def test_run_job_with_the_embedded_milvus_on_s3_embeds_loads_by_key_searches_and_leaks_no_secret(
        tmp_path, milvus_slot, jina_server, jina_key, s3_bucket):
    """jobs/run.py, corpus and output on s3://, milvus.uri = "embedded" with milvus.bucket: the job starts the
    S3-backed Milvus itself (bucket created by the server), imports by key with no copy, searches and stops it.
    Restarted on the same data dir and bucket, it serves every row with its text's exact vector. The S3 secret
    is in no output line, object, report or Milvus file, and the server's /tmp/milvus/server_id_<pid> is gone."""
    corpus = make_corpus(tmp_path / "corpus", files=2, rows_per_file=150, row_group_size=50)
    data_bucket, milvus_bucket = s3_bucket(), f"jb-job-milvus-{os.getpid()}"
    client = boto3.client("s3")
    for f in corpus.files:
        client.upload_file(str(f), data_bucket, f"corpus/{f.name}")
    cfg = base_config(f"s3://{data_bucket}/corpus", f"s3://{milvus_bucket}/runs/job", jina_server.url,
                      corpus={"rows_per_shard": 100},
                      milvus={"uri": "embedded", "bucket": milvus_bucket, "root_path": "m",
                              "data_dir": str(tmp_path / "job-milvus"), "port": S3_MILVUS_PORT + 2,
                              "collection": "s3job"})
    (tmp_path / "job.toml").write_text(toml_of(cfg))
    client.create_bucket(Bucket=milvus_bucket)  # the output goes there before the server (which would create it) runs
    milvus_slot.vacate()  # one embedded Milvus per machine: the job starts its own
    ids_before = set(SERVER_ID_DIR.glob("server_id_*"))
    r = subprocess.run([sys.executable, "jobs/run.py", str(tmp_path / "job.toml"), "--no-progress",
                        "--query", corpus.rows[17]["text"]], cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env=job_env(jina_key))
    assert r.returncode == 0, r.stderr[-3000:]
    assert set(SERVER_ID_DIR.glob("server_id_*")) <= ids_before, "the job's Milvus left its server_id file"
    out = r.stdout.splitlines()
    assert any(line.startswith("load: 300 rows into s3job__") for line in out), r.stdout
    assert out[out.index(next(line for line in out if line.startswith("search "))) + 1].endswith("id 17")
    report = json.loads(_get(milvus_bucket, "runs/job/_load_report.json"))
    assert report["import_files"] == {"read_from": f"s3://{milvus_bucket}/runs/job/shards", "placement": "in bucket"}
    assert _keys(milvus_bucket, "m/"), "the job's server kept no data in milvus.bucket"
    for text in (r.stdout, r.stderr):
        assert S3_SECRET not in text and jina_key not in text
    for b in (data_bucket, milvus_bucket):
        for k in _keys(b):
            assert S3_SECRET.encode() not in _get(b, k), f"s3://{b}/{k} holds the S3 secret"
    for f in (tmp_path / "job-milvus").rglob("*"):
        if f.is_file() and "bin" not in f.parts and f.stat().st_size < 50_000_000:
            assert S3_SECRET.encode() not in f.read_bytes(), f"{f} holds the S3 secret"
            assert S3_KEY_ID.encode() not in f.read_bytes(), f"{f} holds the S3 access key id"
    server = milvus_slot.use("job", lambda: EmbeddedServer(
        tmp_path / "job-milvus", S3_MILVUS_PORT + 2, BucketStorage(milvus_bucket, "m", StorageSettings())))
    try:
        texts = {row["id"]: row["text"] for row in corpus.rows}
        ids = sorted(texts)
        mc = MilvusClient(server.uri)
        mc.load_collection(report["physical"])
        mc.close()
        _check_vectors(server.uri, "s3job", dict(zip(ids, expected_vectors([texts[i] for i in ids]))))
    finally:
        milvus_slot.release("job")


def test_plan_time_check_reaches_milvus_bucket_and_refuses_a_missing_one_before_any_request(
        tmp_path, milvus_s3_server):
    """jobs/run.py checks the load target before embedding: a milvus.bucket that does not exist on the store is
    one line naming it; the right one passes and the summary says the shards will be copied there."""
    from jinabatch.config import MilvusSettings
    from jinabatch.errors import StorageError
    from jinabatch.load.precheck import check_load_target

    corpus = make_corpus(tmp_path / "c", files=1, rows_per_file=10, row_group_size=10)
    types = {"title": pa.string()}
    with pytest.raises(StorageError, match=r"^milvus\.bucket = s3://jb-no-such-bucket: bucket 'jb-no-such-bucket' "
                                           r"does not exist; create the bucket or fix the URI$"):
        check_load_target(types, MilvusSettings(uri=milvus_s3_server.uri, bucket="jb-no-such-bucket"),
                          files=corpus.files, output=str(tmp_path / "out"))
    bucket = milvus_s3_server.bucket.bucket
    ok = check_load_target(types, MilvusSettings(uri=milvus_s3_server.uri, bucket=bucket), files=corpus.files,
                           output=str(tmp_path / "out"))
    assert ok.fill == "bulk" and ok.notes[0].startswith(f"the shards are copied to s3://{bucket}/jinabatch-import/")

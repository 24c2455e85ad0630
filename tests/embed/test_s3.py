"""The embed stage on object storage: corpus and output under s3:// on a real S3-compatible server (SeaweedFS).

Everything the stage does on a local disk works there: planning from a listing, shards written once to their
final key, dead letters, manifest, report, the stored plan, resume after a killed driver (a rerun sends only
the unfinished shards' tokens) and after a killed worker; abandoned multipart uploads are aborted; bad
storage input fails in one line naming the URI — never a secret — before any request.
"""
from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from corpus_gen import assert_vectors_match, make_corpus, write_rows
from fixtures_ray import base_config
from fixtures_s3 import S3_KEY_ID, S3_SECRET
from jinabatch.config import parse_config
from jinabatch.embed.driver import run_embed
from jinabatch.embed.plan import plan_corpus
from jinabatch.errors import CorpusError, StorageError
from jinabatch.jina.probe import PROBE_TEXT
from jinabatch.local_api import fakemodel
from jinabatch.storage import Storage
from procs import job_env, kill_when, toml_of

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def _upload(folder: Path, bucket: str, prefix: str) -> None:
    client = boto3.client("s3")
    for f in sorted(folder.rglob("*.parquet")):
        client.upload_file(str(f), bucket, f"{prefix}/{f.relative_to(folder).as_posix()}")


def _objects(bucket: str, prefix: str = "") -> dict[str, bytes]:
    client = boto3.client("s3")
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for o in page.get("Contents", [])]
    return {k: client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


def _table(objects: dict[str, bytes], folder: str) -> pa.Table:
    parts = [pq.read_table(io.BytesIO(v)) for k, v in sorted(objects.items())
             if k.split("/")[-2] == folder and k.endswith(".parquet")]
    return pa.concat_tables(parts) if parts else pa.table({})


def _assert_complete(bucket: str, prefix: str, corpus) -> dict[str, bytes]:
    objects = _objects(bucket, prefix)
    table = _table(objects, "shards")
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)), "an id was written twice"
    assert sorted(ids) == sorted(corpus.ids), "rows are missing from the output"
    assert_vectors_match(table, {r["id"]: r["text"] for r in corpus.rows})
    assert not [k for k in objects if ".tmp-" in k], "a temp object survived"
    assert boto3.client("s3").list_multipart_uploads(Bucket=bucket).get("Uploads") is None
    return objects


def test_corpus_and_output_on_s3_every_row_once_with_its_own_vector(ray_local, embed_config, jina_server, jina_key,
                                                                     s3_bucket, tmp_path):
    """s3:// in, s3:// out: complete output, dead letters, plan, manifest and report as objects; no secrets."""
    corpus = make_corpus(tmp_path / "c", files=3, rows_per_file=150, row_group_size=50)
    write_rows(tmp_path / "c" / "z.parquet", [{"id": 10_000, "text": None, "title": "t", "n": 1, "score": 0.5,
                                               "flag": True}])
    bucket = s3_bucket()
    _upload(tmp_path / "c", bucket, "corpus")
    cfg = embed_config(f"s3://{bucket}/corpus", f"s3://{bucket}/out", jina_server.url)
    before = jina_server.stats()["requests"]
    rep = run_embed(cfg, progress=False)
    assert rep.finished and (rep.rows_in, rep.rows_embedded, rep.rows_dead_letter) == (451, 450, 1)
    assert rep.output == f"s3://{bucket}/out" and jina_server.stats()["requests"] > before
    objects = _assert_complete(bucket, "out/", corpus)
    for key in ("out/_report.json", "out/_manifest.json", "out/_plan/plan.json", "out/_plan/files.parquet",
                "out/_plan/duplicates.parquet"):
        assert key in objects, key
    (dead,) = _table(objects, "dead_letter").to_pylist()
    assert dead["source_file"] == f"s3://{bucket}/corpus/z.parquet" and dead["reason"] == "null text"
    leaked = [k for k, v in objects.items() if any(s.encode() in v for s in (jina_key, S3_SECRET, S3_KEY_ID))]
    assert leaked == [], f"a secret was written to {leaked}"
    again = run_embed(cfg, progress=False)  # a rerun lists the output once and skips everything
    assert again.shards_skipped == again.shards_total == rep.shards_done and again.rows_embedded == 450


def test_abandoned_multipart_uploads_of_a_killed_run_are_aborted(ray_local, embed_config, jina_server, s3_bucket,
                                                                  tmp_path):
    """An upload a killed worker started and never completed is aborted by the next run."""
    make_corpus(tmp_path / "c", files=1, rows_per_file=50, row_group_size=50)
    bucket = s3_bucket()
    _upload(tmp_path / "c", bucket, "corpus")
    boto3.client("s3").create_multipart_upload(Bucket=bucket, Key="out/shards/shard-00000.parquet")
    run_embed(embed_config(f"s3://{bucket}/corpus", f"s3://{bucket}/out", jina_server.url), progress=False)
    assert boto3.client("s3").list_multipart_uploads(Bucket=bucket).get("Uploads") is None


def test_driver_killed_on_s3_then_rerun_sends_only_unfinished_shards(make_jina_server, jina_key, s3_bucket, tmp_path):
    """SIGKILL jobs/embed.py over s3:// once some shards exist; the rerun spends exactly the rest's tokens."""
    corpus = make_corpus(tmp_path / "c", files=2, rows_per_file=400, row_group_size=100)
    bucket = s3_bucket()
    _upload(tmp_path / "c", bucket, "corpus")
    srv = make_jina_server(latency_ms=150)
    data = base_config(f"s3://{bucket}/corpus", f"s3://{bucket}/out", srv.url, corpus={"rows_per_shard": 100},
                       jina={"max_inputs_per_request": 20}, ray={"workers": 2})
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(toml_of(data))
    cmd = [sys.executable, str(REPO / "jobs" / "embed.py"), str(cfg), "--no-progress"]
    out = Storage.open(f"s3://{bucket}/out")
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(cmd, env=job_env(jina_key), stdout=log, stderr=subprocess.STDOUT)
        try:
            kill_when(proc, lambda: len(out.list("shards")) >= 2, lambda: (tmp_path / "first.log").read_text())
        finally:
            if proc.poll() is None:
                proc.kill()
    done = {f.path.rsplit("/", 1)[-1] for f in out.list("shards")}
    plan = plan_corpus(parse_config(data), out)
    assert plan.reused, "the killed run's stored plan was not reused"
    unfinished = [s for s in plan.shards if f"{s.name}.parquet" not in done]
    assert 2 <= len(done) < len(plan.shards), f"kill came too late: {sorted(done)}"
    text_of = {(r["_file"], r["_row"]): r["text"] for r in corpus.rows}
    want = fakemodel.count_tokens(PROBE_TEXT) + sum(fakemodel.count_tokens(text_of[(p.file.rsplit("/", 1)[-1], r)])
               for s in unfinished for p in s.pieces for r in range(p.row_start, p.row_stop))
    srv.reset_stats()
    p = subprocess.run(cmd, env=job_env(jina_key), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert srv.stats()["tokens"] == want, f"the rerun sent {srv.stats()['tokens']} tokens; unfinished hold {want}"
    _assert_complete(bucket, "out/", corpus)
    rep = out.read_json("_report.json")
    assert rep["shards_skipped"] == len(done) and rep["rows_embedded"] == len(corpus.rows) and rep["finished"]


@pytest.mark.parametrize("case", ["no_bucket", "bad_credentials", "dead_endpoint", "no_parquet"])
def test_bad_storage_input_is_one_line_naming_the_uri_before_any_request(case, embed_config, jina_server, s3_bucket,
                                                                         tmp_path, monkeypatch):
    """A missing bucket, wrong credentials, a dead endpoint or a prefix without Parquet: refused up front."""
    bucket = s3_bucket()
    boto3.client("s3").put_object(Bucket=bucket, Key="corpus/readme.txt", Body=b"not parquet")
    corpus_uri = f"s3://{'no-such-bucket-jb' if case == 'no_bucket' else bucket}/" + (
        "empty" if case == "no_parquet" else "corpus")
    storage = {"connect_timeout": 1, "request_timeout": 3, "max_attempts": 1}
    if case == "dead_endpoint":
        storage["endpoint"] = "http://127.0.0.1:9"
    if case == "bad_credentials":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-for-this-test-1234")
    cfg = parse_config({**base_config(corpus_uri, f"s3://{bucket}/out" if case != "no_bucket" else str(tmp_path / "o"),
                                      jina_server.url), "storage": storage})
    before = jina_server.stats()["requests"]
    with pytest.raises((StorageError, CorpusError)) as e:
        run_embed(cfg, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and S3_SECRET not in msg and "wrong-secret" not in msg
    assert corpus_uri in msg or f"s3://{bucket}/out" in msg, msg
    assert jina_server.stats()["requests"] == before

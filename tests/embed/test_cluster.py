"""On a real multi-node Ray cluster (two raylets, token auth on, as clusters run from Ray 2.61 on).

The cluster is started from this process with ``ray.cluster_utils.Cluster`` without connecting to it, so
the session's local Ray (``ray_local``) is untouched; drivers are subprocesses, as on a real cluster. The
Jina key is in the head's environment only (how a RayJob gets it), never in the job's runtime_env.
"""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from corpus_gen import make_corpus
from jinabatch.local_api import fakemodel

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
KEY = "jina_cluster_SECRET_" + secrets.token_hex(8)


@pytest.fixture(scope="module")
def cluster():
    """A head and a worker node with token auth; the Jina key only in the head's environment."""
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16), JINAAI_API_KEY=KEY)
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests/ray_cluster.py"), "up"], env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        info = json.loads(proc.stdout.readline())
        yield {**info, "env": env}
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)


def _config(tmp: Path, corpus: Path, out: Path, url: str, address: str) -> Path:
    cfg = tmp / f"{out.name}.toml"
    cfg.write_text(f"""
[corpus]
path = "{corpus}"
columns = ["title"]
rows_per_shard = 100
[jina]
base_url = "{url}"
dimensions = 64
[limits]
rpm = 3000
tpm = 3000000
concurrency = 4
[ray]
address = "{address}"
workers = 2
num_cpus_per_task = 0.5
[output]
path = "{out}"
""")
    return cfg


def _check_output(out: Path, corpus: Path) -> dict:
    src = pq.read_table(corpus)
    got = pq.read_table(out / "shards")
    assert sorted(got.column("id").to_pylist()) == sorted(src.column("id").to_pylist())
    text = dict(zip(src.column("id").to_pylist(), src.column("text").to_pylist()))
    ids = got.column("id").to_pylist()
    want = fakemodel.embed("jina-embeddings-v3", "retrieval.passage", 64, [text[i] for i in ids])
    assert np.array_equal(np.asarray(got.column("embedding").to_pylist(), np.float32), want)
    return json.loads((out / "_report.json").read_text())


def test_driver_on_a_two_node_cluster_spreads_shards_over_both_nodes(cluster, jina_server, tmp_path):
    """Shards run on both nodes; every vector is the server's for its text; the key is in no output."""
    corpus = tmp_path / "corpus"
    make_corpus(corpus, files=2, rows_per_file=400, row_group_size=100)
    out = tmp_path / "out"
    env = dict(cluster["env"], JINAAI_API_KEY=jina_server.key)
    r = subprocess.run([sys.executable, str(ROOT / "jobs/embed.py"), str(_config(tmp_path, corpus, out, jina_server.url,
                        cluster["address"])), "--no-progress"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rep = _check_output(out, corpus)
    assert rep["rows_embedded"] == 800 and len(rep["shards_by_node"]) == 2, rep["shards_by_node"]


def test_submitted_job_keeps_the_key_out_of_job_metadata_logs_and_state(cluster, make_jina_server, tmp_path):
    """`ray job submit` path: the driver reads the key from the head's env; Ray records it nowhere we can see."""
    server = make_jina_server(api_keys=frozenset({KEY}))
    corpus = tmp_path / "corpus"
    make_corpus(corpus, files=1, rows_per_file=300, row_group_size=100)
    out = tmp_path / "job-out"
    cfg = _config(tmp_path, corpus, out, server.url, "auto")
    cmd = f"{sys.executable} {ROOT / 'jobs/embed.py'} {cfg} --no-progress"
    r = subprocess.run([sys.executable, str(ROOT / "tests/ray_cluster.py"), "submit", cluster["dashboard"], cmd],
                       env=cluster["env"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    job = json.loads(r.stdout.strip().splitlines()[-1])
    assert job["status"].endswith("SUCCEEDED"), job["logs"][-2000:]
    rep = _check_output(out, corpus)
    assert rep["rows_embedded"] == 300 and server.stats()["tokens"] > 0
    seen = [job["logs"], json.dumps(job["info"]), json.dumps(job["tasks"]), json.dumps(job["actors"])]
    seen += [p.read_text(errors="replace") for p in out.rglob("*.json")]
    seen += [json.dumps({k.decode(): v.decode(errors="replace") for k, v in
                         (pq.read_metadata(p).metadata or {}).items()}) for p in out.rglob("*.parquet")]
    assert "embed shard-00000" in seen[2]  # the state API did answer with our tasks
    for text in seen:
        assert KEY not in text


def test_cluster_run_with_corpus_and_output_on_s3_uses_no_shared_path(cluster, jina_server, s3_bucket, tmp_path):
    """Corpus and output under s3:// (SeaweedFS): shards on both nodes, exact vectors, no local path in the config,
    and the S3 secret (each node's own environment) written nowhere in the output."""
    import io

    import boto3
    import pyarrow as pa

    from fixtures_s3 import S3_SECRET

    corpus = tmp_path / "corpus"
    make_corpus(corpus, files=2, rows_per_file=400, row_group_size=100)
    bucket = s3_bucket()
    client = boto3.client("s3")
    for f in sorted(corpus.glob("*.parquet")):
        client.upload_file(str(f), bucket, f"corpus/{f.name}")
    cfg = _config(tmp_path, f"s3://{bucket}/corpus", Path("s3-out"), jina_server.url, cluster["address"])
    text = cfg.read_text().replace('path = "s3-out"', f'path = "s3://{bucket}/out"')
    assert str(tmp_path) not in text
    cfg.write_text(text)
    env = dict(cluster["env"], JINAAI_API_KEY=jina_server.key)
    r = subprocess.run([sys.executable, str(ROOT / "jobs/embed.py"), str(cfg), "--no-progress"], env=env,
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="out/")["Contents"]]
    bodies = {k: client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}
    got = pa.concat_tables([pq.read_table(io.BytesIO(v)) for k, v in sorted(bodies.items())
                            if k.startswith("out/shards/")])
    src = pq.read_table(corpus)
    text_of = dict(zip(src.column("id").to_pylist(), src.column("text").to_pylist()))
    ids = got.column("id").to_pylist()
    assert sorted(ids) == sorted(text_of)
    want = fakemodel.embed("jina-embeddings-v3", "retrieval.passage", 64, [text_of[i] for i in ids])
    assert np.array_equal(np.asarray(got.column("embedding").to_pylist(), np.float32), want)
    rep = json.loads(bodies["out/_report.json"])
    assert rep["rows_embedded"] == 800 and len(rep["shards_by_node"]) == 2, rep["shards_by_node"]
    assert not [k for k, v in bodies.items() if S3_SECRET.encode() in v or jina_server.key.encode() in v]

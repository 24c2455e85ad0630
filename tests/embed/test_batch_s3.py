"""Batch mode with the output on s3:// (real SeaweedFS): the batch ids are recorded as objects under the output
prefix before the job waits on them, and a rerun that finds them resumes instead of submitting again."""
from __future__ import annotations

import io
import json

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from corpus_gen import assert_vectors_match, make_corpus
from fixtures_s3 import S3_KEY_ID, S3_SECRET
from jinabatch.embed.driver import run_embed
from jinabatch.observe.records import ShardBatches
from jinabatch.storage import Storage

pytestmark = pytest.mark.slow

NANO, DIMS = "jina-embeddings-v5-text-nano", 64


def _objects(bucket: str, prefix: str) -> dict[str, bytes]:
    client = boto3.client("s3")
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for o in page.get("Contents", [])]
    return {k: client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


def test_s3_output_records_each_batch_id_and_a_rerun_resumes_from_the_objects(
        ray_local, embed_config, make_jina_server, jina_key, s3_bucket, tmp_path):
    srv = make_jina_server(batch_queue_s=0.05, batch_processing_s=0.1)
    corpus = make_corpus(tmp_path / "c", files=1, rows_per_file=400, row_group_size=100)
    bucket = s3_bucket()
    out = f"s3://{bucket}/out"
    cfg = embed_config(tmp_path / "c", out, srv.url, corpus={"columns": []},
                       jina={"api": "batch", "model": NANO, "dimensions": DIMS,
                             "batch": {"poll_initial": 0.05, "poll_max": 0.2}})
    rep = run_embed(cfg, progress=False)
    assert rep.finished and rep.batches.submitted == 2
    objects = _objects(bucket, "out/")
    recs = {k: ShardBatches.model_validate(json.loads(v)) for k, v in objects.items() if k.startswith("out/_batches/")}
    assert sorted(recs) == ["out/_batches/shard-00000.json", "out/_batches/shard-00001.json"]
    ids = sorted(e.batch_id for r in recs.values() for e in r.batches)
    assert len(ids) == 2 and all(e.status == "completed" for r in recs.values() for e in r.batches)
    leaked = [k for k, v in objects.items() if any(s.encode() in v for s in (jina_key, S3_SECRET, S3_KEY_ID))]
    assert leaked == [], f"a secret was written to {leaked}"

    # the shards gone (as if the run had been killed after recording its batches): the rerun downloads the
    # recorded batches again instead of submitting them
    st = Storage.open(out)
    st.delete_many([f"shards/shard-0000{i}.parquet" for i in range(2)] + [f.path for f in st.list("_progress")])
    again = run_embed(cfg, progress=False)
    assert again.finished and again.batches.resumed == 2 and again.batches.submitted == 0
    assert srv.stats()["batch"]["submitted"] == 2
    table = pa.concat_tables([pq.read_table(io.BytesIO(v)) for _, v in sorted(_objects(bucket, "out/shards/").items())])
    assert_vectors_match(table, {r["id"]: r["text"] for r in corpus.rows}, model=NANO, dims=DIMS)

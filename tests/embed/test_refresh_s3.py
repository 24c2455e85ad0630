"""A refresh on s3:// (SeaweedFS): full output, then two nightly deltas, all under one bucket; the delta holds only
new and changed rows and the deleted ids; compaction on s3:// resolves the chain exactly; a delta read from s3:// is
applied in place to Milvus Lite and rolled back."""
from __future__ import annotations

import io
from pathlib import Path

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pymilvus import MilvusClient

from corpus_gen import DIMS, MODEL, TASK, make_corpus
from fixtures_ray import base_config
from jinabatch.config import parse_config
from jinabatch.embed.compact import compact
from jinabatch.embed.driver import run_embed
from jinabatch.load.stage import run_load
from jinabatch.local_api import fakemodel
from refresh_gen import evolve

pytestmark = pytest.mark.slow


def _upload(folder: Path, bucket: str, prefix: str) -> None:
    client = boto3.client("s3")
    for f in sorted(folder.rglob("*.parquet")):
        client.upload_file(str(f), bucket, f"{prefix}/{f.relative_to(folder).as_posix()}")


def _read(bucket: str, prefix: str) -> pa.Table:
    client = boto3.client("s3")
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
                  if o["Key"].endswith(".parquet"))
    tables = [pq.read_table(io.BytesIO(client.get_object(Bucket=bucket, Key=k)["Body"].read())) for k in keys]
    return pa.concat_tables(tables) if tables else pa.table({})


def _exact(table: pa.Table, rows: list[dict]) -> None:
    text = {r["id"]: r["text"] for r in rows}
    assert sorted(table.column("id").to_pylist()) == sorted(text)
    want = fakemodel.embed(MODEL, TASK, DIMS, [text[i] for i in table.column("id").to_pylist()])
    assert np.array_equal(np.asarray(table.column("embedding").to_pylist(), np.float32), want)


def test_a_chain_of_refreshes_on_s3_compacts_exactly_and_loads_in_place(ray_local, embed_config, jina_server,
                                                                        s3_bucket, tmp_path, monkeypatch, jina_key):
    from fixtures_ray import KEY_ENV

    monkeypatch.setenv(KEY_ENV, jina_key)
    bucket = s3_bucket()
    rows = [make_corpus(tmp_path / "v0", files=2, rows_per_file=300, row_group_size=100).rows]
    _upload(tmp_path / "v0", bucket, "v0")
    for night in (1, 2):
        new, what = evolve(rows[-1], tmp_path / f"v{night}", seed=night, edit=0.05, delete=0.03, add=0.04,
                           first_new_id=100_000 * night)
        rows.append(new)
        _upload(tmp_path / f"v{night}", bucket, f"v{night}")
    lite = {"uri": str(tmp_path / "lite.db"), "collection": "s3night"}

    def cfg(night, out, prev=None):
        return parse_config({**base_config(f"s3://{bucket}/v{night}", f"s3://{bucket}/{out}", jina_server.url,
                                           corpus={"rows_per_shard": 200},
                                           output={"path": f"s3://{bucket}/{out}",
                                                   **({"previous": f"s3://{bucket}/{prev}"} if prev else {})}),
                             "milvus": lite})

    run_embed(cfg(0, "a"), progress=False)
    run_load(cfg(0, "a"), progress=False)
    for night, out, prev in ((1, "b", "a"), (2, "c", "b")):
        rep = run_embed(cfg(night, out, prev), progress=False)
        assert rep.chain.kind == "delta" and rep.chain.chain_length == night + 1
        assert 0 < rep.rows_written < len(rows[night]) // 5
        deleted = _read(bucket, f"{out}/_delta/deleted").column("id").to_pylist()
        assert rep.chain.deleted == len(deleted) > 0
        load = run_load(cfg(night, out, prev), progress=False)
        assert load.how == "in place" and load.rows == len(rows[night])
    client = MilvusClient(lite["uri"])
    got = client.query("s3night", filter="", output_fields=["id", "embedding"], limit=16384,
                       consistency_level="Strong")
    _exact(pa.table({"id": [r["id"] for r in got],
                     "embedding": pa.array([list(r["embedding"]) for r in got], pa.list_(pa.float32()))}), rows[2])
    compact(cfg(2, "c"), f"s3://{bucket}/g")
    _exact(_read(bucket, "g/shards/"), rows[2])
    run_load(cfg(2, "c"), rollback=True, progress=False)
    assert client.query("s3night", filter="", output_fields=["count(*)"],
                        consistency_level="Strong")[0]["count(*)"] == len(rows[1])
    client.close()

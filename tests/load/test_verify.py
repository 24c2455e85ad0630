"""Load verification samples the whole output: ids spread over every shard and row group (seeded, a fixed
number of them), compared vector by vector and value by value against a real Milvus (server and Lite)."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from pymilvus import MilvusClient

from fixtures_milvus import make_output, sample_texts
from jinabatch.errors import LoadError
from jinabatch.load.schema import ShardFile, read_output
from jinabatch.load.stage import run_load
from jinabatch.load.verify import sample_rows, verify


def _shards(groups: list[list[int]]) -> list[Shard]:
    return [ShardFile(None, f"shards/shard-{i:05d}.parquet", sum(g), {}, tuple(g)) for i, g in enumerate(groups)]


def test_the_sample_reaches_every_shard_and_row_group_and_depends_only_on_its_seed():
    """30 shards of 4 row groups (50, 50, 50, 5 rows): 200 distinct rows, at least one in each of the 120 row
    groups, the small ones too; the same seed draws the same rows, another seed other rows."""
    shards = _shards([[50, 50, 50, 5]] * 30)
    picked = sample_rows(shards, 200, seed=7)
    assert len(picked) == len(set(picked)) == 200
    assert {(s, g) for s, g, _ in picked} == {(s, g) for s in range(30) for g in range(4)}
    assert all(0 <= r < shards[s].row_groups[g] for s, g, r in picked)
    assert sample_rows(shards, 200, seed=7) == picked and sample_rows(shards, 200, seed=8) != picked


def test_more_row_groups_than_the_sample_get_one_row_each_spread_over_all_of_them():
    """1,000 shards of 5 row groups: 200 rows, each from another row group, one per stride of 25 row groups —
    the last shards' too. The sample size stays 200 however big the output."""
    shards = _shards([[1000] * 5] * 1000)
    picked = sample_rows(shards, 200, seed=3)
    flat = sorted(s * 5 + g for s, g, _ in picked)
    assert len(picked) == 200 and all(i * 25 <= k < (i + 1) * 25 for i, k in enumerate(flat))


def test_the_sample_is_every_row_of_a_small_output():
    """Fewer rows than the sample: each row once."""
    small = _shards([[3, 4], [5]])
    assert sorted(sample_rows(small, 200, seed=1)) == sorted(
        [(0, 0, r) for r in range(3)] + [(0, 1, r) for r in range(4)] + [(1, 0, r) for r in range(5)])


@pytest.fixture(params=["lite", "server"])
def milvus_uri(request, tmp_path):
    if request.param == "lite":
        return str(tmp_path / "milvus" / "lite.db")
    return request.getfixturevalue("milvus_server").uri


def test_a_bad_row_group_late_in_a_shard_fails_verification(tmp_path, milvus_uri, milvus_config):
    """Two shards of 4 row groups: after a verified load, the last row group of the second shard is changed in
    Milvus (its vectors moved by 0.5); verifying that collection against the shards fails, naming an id of
    that row group, whatever the seed — the first row group of each shard alone would pass."""
    texts = sample_texts(400)
    make_output(tmp_path / "out", texts, rows_per_shard=200, row_group_size=50)
    cfg = milvus_config(milvus_uri, tmp_path / "out")
    rep = run_load(cfg, progress=False)
    assert rep.verified_ids == 200 and rep.verify_seed is not None
    assert json.loads((tmp_path / "out" / "_load_report.json").read_text())["verify_seed"] == rep.verify_seed
    late = pq.ParquetFile(tmp_path / "out" / "shards" / "shard-00001.parquet").read_row_group(3)
    assert late.num_rows == 50
    bad = late.to_pylist()
    for r in bad:
        r["embedding"] = (np.asarray(r["embedding"], np.float32) + np.float32(0.5)).tolist()
    client = MilvusClient(milvus_uri)
    try:
        client.upsert(rep.physical, bad)
        client.flush(rep.physical)
        inp = read_output(tmp_path / "out")
        for _ in range(3):  # a fresh seed each time
            with pytest.raises(LoadError, match="different vector than shard-00001.parquet row group 3"):
                verify(client, rep.physical, inp)
        with pytest.raises(LoadError, match="row group 3 .*max diff 0.5"):
            verify(client, rep.physical, inp, seed=rep.verify_seed)
    finally:
        client.close()

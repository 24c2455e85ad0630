"""The load stage against real Milvus Lite: batched upsert, verification, alias swap, rollback, cleanup."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pymilvus import MilvusClient

from fixtures_milvus import make_output, sample_texts
from jinabatch.errors import ConfigError, LoadError
from jinabatch.load.stage import run_load
from jinabatch.load.milvus import alias_target, physicals
from jinabatch.load.ledger import ledger_name
from jinabatch.load.search import search


def _all_rows(client, alias, id_name="id"):
    rows = client.query(alias, filter="", output_fields=[id_name, "embedding", "text"], limit=16384,
                        consistency_level="Strong")
    return {r[id_name]: r for r in rows}


@pytest.fixture
def lite(tmp_path):
    return str(tmp_path / "milvus" / "lite.db")


def test_lite_load_holds_every_vector_exactly_and_writes_the_report(tmp_path, lite, milvus_config):
    vectors = make_output(tmp_path / "out", sample_texts(230), rows_per_shard=100, extra={"n": list(range(230))})
    cfg = milvus_config(lite, tmp_path / "out")
    rep = run_load(cfg, progress=False)
    assert (rep.mode, rep.rows, rep.previous, rep.collection) == ("insert", 230, None, cfg.milvus.collection)
    client = MilvusClient(lite)
    assert alias_target(client, cfg.milvus.collection) == rep.physical
    rows = _all_rows(client, cfg.milvus.collection)
    assert rows.keys() == vectors.keys()
    for i, v in vectors.items():
        assert np.array_equal(np.asarray(rows[i]["embedding"], np.float32), v), i
    assert rows["doc-000007"]["text"] == sample_texts(230)[7]
    written = json.loads((tmp_path / "out" / "_load_report.json").read_text())
    assert written["physical"] == rep.physical and written["rows"] == 230
    client.close()


def test_lite_int64_ids_load_and_search_finds_a_row_by_its_own_text_first(tmp_path, lite, milvus_config):
    texts = sample_texts(120)
    make_output(tmp_path / "out", texts, id_type="int64")
    cfg = milvus_config(lite, tmp_path / "out")
    run_load(cfg, progress=False)
    for i in (0, 57, 119):
        hits = search(cfg, texts[i], k=3)
        assert hits[0].id == 1000 + i and hits[0].fields["text"] == texts[i]
        assert hits[0].score > hits[1].score


def test_lite_rerun_never_duplicates_rows_and_keep_previous_drops_the_oldest(tmp_path, lite, milvus_config):
    make_output(tmp_path / "out", sample_texts(50))
    cfg = milvus_config(lite, tmp_path / "out", keep_previous=1)
    reps = [run_load(cfg, progress=False) for _ in range(3)]
    client = MilvusClient(lite)
    assert len(_all_rows(client, cfg.milvus.collection)) == 50
    assert reps[1].previous == reps[0].physical and reps[2].previous == reps[1].physical
    assert reps[2].dropped == [reps[0].physical]
    assert [p.name for p in physicals(client, cfg.milvus.collection)] == [reps[1].physical, reps[2].physical]
    ledger = ledger_name(cfg.milvus.collection)  # what each kept collection holds; a dropped one leaves no entry
    client.load_collection(ledger)
    rows = client.query(ledger, filter='key != ""', output_fields=["key"], consistency_level="Strong")
    assert sorted(r["key"] for r in rows) == sorted([reps[1].physical, reps[2].physical])
    client.close()


def test_lite_keep_previous_zero_keeps_only_the_live_collection(tmp_path, lite, milvus_config):
    make_output(tmp_path / "out", sample_texts(20))
    cfg = milvus_config(lite, tmp_path / "out", keep_previous=0)
    first = run_load(cfg, progress=False)
    second = run_load(cfg, progress=False)
    assert second.dropped == [first.physical]
    client = MilvusClient(lite)
    assert [p.name for p in physicals(client, cfg.milvus.collection)] == [second.physical]
    client.close()


def test_lite_rollback_points_the_alias_at_the_previous_collection(tmp_path, lite, milvus_config):
    make_output(tmp_path / "a", sample_texts(30))
    make_output(tmp_path / "b", sample_texts(45))
    cfg_a = milvus_config(lite, tmp_path / "a", keep_previous=2)
    cfg_b = milvus_config(lite, tmp_path / "b", keep_previous=2, collection=cfg_a.milvus.collection)
    a = run_load(cfg_a, progress=False)
    b = run_load(cfg_b, progress=False)
    rb = run_load(cfg_b, rollback=True, progress=False)
    assert (rb.mode, rb.physical, rb.previous, rb.rows) == ("rollback", a.physical, b.physical, 30)
    client = MilvusClient(lite)
    assert alias_target(client, cfg_a.milvus.collection) == a.physical
    assert len(_all_rows(client, cfg_a.milvus.collection)) == 30
    client.close()
    with pytest.raises(LoadError, match=r"no older verified collection is kept to roll back to"):
        run_load(cfg_b, rollback=True, progress=False)


def test_lite_failed_load_leaves_the_alias_and_drops_the_partial_collection(tmp_path, lite, milvus_config):
    make_output(tmp_path / "good", sample_texts(40))
    cfg = milvus_config(lite, tmp_path / "good")
    good = run_load(cfg, progress=False)
    make_output(tmp_path / "bad", sample_texts(60), rows_per_shard=30)
    bad_shard = tmp_path / "bad" / "shards" / "shard-00001.parquet"
    t = pq.read_table(bad_shard)  # second shard: vectors of half the run's dimension
    short = pa.array([v[:32] for v in t.column("embedding").to_pylist()], pa.list_(pa.float32()))
    pq.write_table(t.set_column(1, "embedding", short).replace_schema_metadata(t.schema.metadata), bad_shard)
    bad_cfg = milvus_config(lite, tmp_path / "bad", collection=cfg.milvus.collection)
    with pytest.raises(LoadError, match=r"shard-00001\.parquet: .*dimension 64"):
        run_load(bad_cfg, progress=False)
    client = MilvusClient(lite)
    assert alias_target(client, cfg.milvus.collection) == good.physical
    assert [p.name for p in physicals(client, cfg.milvus.collection)] == [good.physical]
    assert len(_all_rows(client, cfg.milvus.collection)) == 40
    client.close()


def test_upsert_batches_stay_under_insert_batch_mb(tmp_path, lite, milvus_config, monkeypatch):
    """A tiny insert_batch_mb splits shards into many RPCs, each under the limit, and all rows arrive."""
    make_output(tmp_path / "out", sample_texts(300), rows_per_shard=150)
    cfg = milvus_config(lite, tmp_path / "out", insert_batch_mb=0.01)  # ~10 kB: a few rows of 64 floats
    sizes = []
    real = MilvusClient.upsert

    def spy(self, name, data, *a, **kw):
        if not name.endswith("__jinabatch_ledger"):  # the load's own record of what the collection holds
            sizes.append(sum(len(r["embedding"]) * 4 + len(r["text"]) + len(r["id"]) for r in data))
        return real(self, name, data, *a, **kw)

    monkeypatch.setattr(MilvusClient, "upsert", spy)
    rep = run_load(cfg, progress=False)
    assert rep.rows == 300 and len(sizes) >= 8  # ~90 kB of rows
    assert max(sizes) <= 0.01 * 1024 * 1024


def test_bulk_mode_on_lite_is_a_config_error(tmp_path, lite, milvus_config):
    make_output(tmp_path / "out", sample_texts(5))
    with pytest.raises(ConfigError, match=r"milvus.mode = \"bulk\" needs a Milvus server"):
        run_load(milvus_config(lite, tmp_path / "out", mode="bulk"), progress=False)


def test_alias_name_taken_by_a_plain_collection_is_refused(tmp_path, lite, milvus_config):
    make_output(tmp_path / "out", sample_texts(5))
    cfg = milvus_config(lite, tmp_path / "out")
    (tmp_path / "milvus").mkdir()
    client = MilvusClient(lite)
    client.create_collection(cfg.milvus.collection, dimension=4)
    with pytest.raises(LoadError, match=r"exists and is not an alias"):
        run_load(cfg, progress=False)
    assert physicals(client, cfg.milvus.collection) == []
    client.close()


def test_load_then_search_on_one_open_connection_and_its_repr_hides_the_token(tmp_path, lite, milvus_config,
                                                                              monkeypatch):
    """run_load(target=...) reuses the caller's connection (what jobs/run.py does: load, then search)."""
    from jinabatch.load.milvus import connect
    from jinabatch.load.search import format_hits, search_target

    monkeypatch.setenv("MILVUS_TOKEN", "tok_SECRET_never_shown")
    texts = sample_texts(40)
    make_output(tmp_path / "out", texts)
    cfg = milvus_config(lite, tmp_path / "out")
    with connect(cfg.milvus) as target:
        assert "SECRET" not in repr(target)
        run_load(cfg, target=target, progress=False)
        hits = search_target(target, cfg, texts[9], k=2)
    assert hits[0].id == "doc-000009"
    assert format_hits(hits).splitlines()[0].endswith("id doc-000009")


def test_load_records_its_phases_and_adds_its_part_to_the_report_page(tmp_path, lite, milvus_config):
    """_load_report.json has each step's seconds in order and the rows loaded over time; _report.html shows them."""
    make_output(tmp_path / "out", sample_texts(120), rows_per_shard=50)
    rep = run_load(milvus_config(lite, tmp_path / "out"), progress=False)
    written = json.loads((tmp_path / "out" / "_load_report.json").read_text())
    assert [p["phase"] for p in written["phases"]] == ["create", "fill", "flush + index", "load", "verify",
                                                       "alias switch", "tidy"]
    assert sum(i["rows"] for i in written["imports"]) == 120
    page = (tmp_path / "out" / "_report.html").read_text()
    assert "<h2>Load into Milvus</h2>" in page and f"<td>{rep.physical}</td>" in page
    assert 'id="chart-load_phases"' in page and 'id="chart-load_imports"' in page

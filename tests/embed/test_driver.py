"""The embed stage end to end: real local Ray, real HTTP to the local Jina-compatible server.

Each run embeds a small generated corpus (several files and row groups, carried columns of several types)
and the output is checked row by row against the fake model: every vector is its own row's text's vector,
every id appears exactly once, carried columns are carried, footers describe the run without the key,
and the report reconciles. Resume and the fingerprint guard are here too (in-process; the subprocess
kill/resume test is in test_embed_faults.py).
"""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from corpus_gen import CARRIED, DIMS, MODEL, TASK, assert_vectors_match, make_corpus, read_output
from jinabatch.embed.driver import run_embed
from jinabatch.errors import ConfigError
from jinabatch.observe.runlog import RunLog
from jinabatch.embed.shards import read_shard_meta
from jinabatch.storage import Storage

pytestmark = pytest.mark.slow


def _files_containing(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def _check_output(out: Path, corpus, rep) -> pa.Table:
    """What every complete run must satisfy; returns the output table."""
    table = read_output(out)
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)), "an id was written more than once"
    assert sorted(ids) == sorted(corpus.ids), "output ids differ from the corpus ids"
    assert_vectors_match(table, {r["id"]: r["text"] for r in corpus.rows})
    assert table.schema.field("embedding").type == pa.list_(pa.float32())
    rows = corpus.by_id()
    for c in CARRIED:
        got = dict(zip(ids, table.column(c).to_pylist()))
        assert all(got[i] == rows[i][c] for i in ids), f"carried column {c!r} not carried row for row"
    assert rep.rows_in == len(corpus.rows) == rep.rows_embedded + rep.rows_dead_letter
    assert rep.finished and rep.shards_failed == 0
    assert not list((out / "shards").glob("*.tmp-*")), "a temp shard file survived a finished run"
    return table


def test_end_to_end_int_ids_every_row_gets_its_own_texts_vector(ray_local, embed_config, jina_server, jina_key,
                                                                  tmp_path):
    """3 files x 3 row groups, int ids: output complete, vectors exact, footers right, report reconciles."""
    corpus = make_corpus(tmp_path / "corpus", files=3, rows_per_file=300, row_group_size=100)
    out = tmp_path / "out"
    cfg = embed_config(tmp_path / "corpus", out, jina_server.url)
    before = jina_server.stats()
    rep = run_embed(cfg, progress=False)
    after = jina_server.stats()
    table = _check_output(out, corpus, rep)
    assert table.schema.field("id").type == pa.int64()
    assert table.schema.field("n").type == pa.int32() and table.schema.field("flag").type == pa.bool_()

    # 900 rows in 300-row files, rows_per_shard 200: shards cut the corpus every 200 rows, across files
    shards = sorted((out / "shards").glob("shard-*.parquet"))
    assert [pq.read_metadata(s).num_rows for s in shards] == [200, 200, 200, 200, 100]
    assert rep.shards_total == rep.shards_done == 5
    pieces = []
    for s in shards:
        meta = read_shard_meta(Storage.open(out), f"shards/{s.name}")
        assert meta["model"] == MODEL and meta["task"] == TASK and meta["dimensions"] == DIMS
        assert meta["fingerprint"] == cfg.fingerprint() and meta["rows"] == pq.read_metadata(s).num_rows
        assert meta["rows_dead_letter"] == 0 and meta["stop"] - meta["start"] == meta["rows"]
        assert all(Path(p["file"]).name.startswith("part-") for p in meta["pieces"])
        pieces += [(Path(p["file"]).name, p["row_start"], p["row_stop"]) for p in meta["pieces"]]
    # every piece is named: shard 1 takes the end of part-0 and the start of part-1
    assert pieces[:3] == [("part-000.parquet", 0, 200), ("part-000.parquet", 200, 300), ("part-001.parquet", 0, 100)]
    # what the server counted is what the report says was sent
    assert rep.tokens == after["tokens"] - before["tokens"] > 0
    assert rep.requests == after["requests"] - before["requests"]
    report = json.loads((out / "_report.json").read_text())
    assert report["rows_embedded"] == 900 and report["finished"] is True
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["state"] == "finished" and manifest["shards"]["done"] == 5 and manifest["shards"]["pending"] == 0
    assert sorted(RunLog.read_done(Storage.open(out))) == list(range(5))
    assert _files_containing(out, jina_key.encode()) == [], "the API key was written to the output"


def test_end_to_end_string_ids_with_bundled_server_and_four_workers(ray_local, embed_config, tmp_path):
    """String ids, base_url = "local" (the job starts its own server), 4 workers: same guarantees."""
    corpus = make_corpus(tmp_path / "corpus", files=2, rows_per_file=250, row_group_size=50, id_type="str")
    out = tmp_path / "out"
    cfg = embed_config(tmp_path / "corpus", out, "local", ray={"workers": 4}, corpus={"rows_per_shard": 100})
    rep = run_embed(cfg, progress=False)
    table = _check_output(out, corpus, rep)
    assert table.schema.field("id").type == pa.string()
    assert rep.shards_done == 5  # 500 rows, 100 per shard, cut across the two files


def test_rerun_skips_finished_shards_and_sends_nothing(ray_local, embed_config, jina_server, tmp_path):
    """A second run of the same config over a complete output sends no request and reports the same rows."""
    corpus = make_corpus(tmp_path / "corpus", files=2, rows_per_file=100, row_group_size=50)
    out = tmp_path / "out"
    cfg = embed_config(tmp_path / "corpus", out, jina_server.url)
    first = run_embed(cfg, progress=False)
    before = jina_server.stats()["requests"]
    again = run_embed(cfg, progress=False)
    assert jina_server.stats()["requests"] == before
    assert again.shards_skipped == again.shards_total == first.shards_done
    assert again.rows_embedded == first.rows_embedded == len(corpus.rows) and again.finished
    _check_output(out, corpus, again)


def test_other_fingerprint_over_existing_output_is_refused(ray_local, embed_config, jina_server, tmp_path):
    """Other dimensions into the same output folder: ConfigError naming the folder and what to do."""
    make_corpus(tmp_path / "corpus", files=1, rows_per_file=50, row_group_size=50)
    out = tmp_path / "out"
    run_embed(embed_config(tmp_path / "corpus", out, jina_server.url), progress=False)
    before = jina_server.stats()["requests"]
    other = embed_config(tmp_path / "corpus", out, jina_server.url, jina={"dimensions": 128})
    with pytest.raises(ConfigError) as e:
        run_embed(other, progress=False)
    msg = str(e.value)
    assert str(out) in msg and "fingerprint" in msg and "output.path" in msg
    assert jina_server.stats()["requests"] == before
    assert json.loads((out / "_manifest.json").read_text())["fingerprint"] != other.fingerprint()


def test_output_inside_the_corpus_folder_is_refused_or_resumable(ray_local, embed_config, jina_server, tmp_path):
    """corpus.path = c/, output.path = c/out: refused up front, or a rerun resumes (never reads its own output)."""
    make_corpus(tmp_path / "c", files=1, rows_per_file=50, row_group_size=50)
    cfg = embed_config(tmp_path / "c", tmp_path / "c" / "out", jina_server.url)
    try:
        run_embed(cfg, progress=False)
    except ConfigError as e:
        assert "output.path" in str(e)
        return
    again = run_embed(cfg, progress=False)
    assert again.shards_skipped == again.shards_total == 1


def test_late_chunking_without_a_document_column_is_refused_before_any_request(embed_config, jina_server, tmp_path):
    """late_chunking joins a request's inputs into one sequence: without corpus.document_column it is refused."""
    make_corpus(tmp_path / "c", files=1, rows_per_file=10, row_group_size=10)
    cfg = embed_config(tmp_path / "c", tmp_path / "out", jina_server.url, jina={"late_chunking": True})
    before = jina_server.stats()["requests"]
    with pytest.raises(ConfigError, match="corpus.document_column"):
        run_embed(cfg, progress=False)
    assert jina_server.stats()["requests"] == before and not (tmp_path / "out").exists()

"""The plan-time check of carried columns against the configured Milvus (jinabatch.load.precheck / .target):
everything the load would refuse is refused here, naming column, file and setting; nulls are placed, not refused."""
from __future__ import annotations

import contextlib
import re
import socket
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jinabatch.config import MilvusSettings
from jinabatch.errors import ConfigError, CorpusError
from jinabatch.load.precheck import check_load_target
from jinabatch.load.target import ServerInfo, choose_layout, parse_version, probe_server

OLD = ServerInfo.of("server", "v2.3.5-lite")
NEW = ServerInfo.of("server", "v2.5.4")
LITE = ServerInfo.of("lite", "milvus_lite-3.2.2")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _corpus(tmp_path, **cols) -> tuple[list[str], dict[str, pa.DataType]]:
    n = len(next(iter(cols.values())))
    t = pa.table({"id": [f"d{i}" for i in range(n)], "text": ["t"] * n, **cols})
    f = tmp_path / "a.parquet"
    pq.write_table(t, f, row_group_size=3)
    return [str(f)], {c: t.schema.field(c).type for c in cols}


def test_versions_decide_nullable_fields():
    assert parse_version("v2.3.5-lite") == (2, 3) and parse_version("milvus_lite-3.2.2") == (3, 2)
    assert parse_version("Zilliz Cloud Vector Database(Compatible with Milvus 2.5)") == (2, 5)
    assert parse_version("unknown") is None
    assert (OLD.nullable, NEW.nullable, LITE.nullable) == (False, True, True)
    assert not ServerInfo.of("server", "v2.4.9").nullable and not ServerInfo.of("server", "weird").nullable


def test_layout_without_nullable_fields_puts_only_null_holding_columns_in_the_dynamic_field():
    nulls = {"title": 3, "n": 0, "day": 1}
    old = choose_layout(nulls, OLD)
    assert (old.typed, old.dynamic, old.nullable) == (("n",), ("title", "day"), False)
    new = choose_layout(nulls, NEW)
    assert (new.typed, new.dynamic, new.nullable) == (("title", "n", "day"), (), True)


@pytest.mark.parametrize("columns, match", [
    (["my-col"], r"corpus\.columns: column 'my-col' cannot be a Milvus field name"),
    (["2nd"], r"column '2nd' cannot be a Milvus field name"),
    (["embedding"], r"corpus\.columns: column 'embedding' has the name of the output's vector field"),
    (["$meta"], r"column '\$meta' has the name of the output's dynamic field"),
    (["id"], r"'id' is the id column \(corpus\.id_column\).*drop it from corpus\.columns"),
])
def test_column_names_milvus_cannot_use_are_refused_naming_the_setting(columns, match):
    with pytest.raises(CorpusError, match=match):
        check_load_target({c: pa.string() for c in columns}, MilvusSettings(), server=OLD)


def test_an_id_column_name_milvus_cannot_use_is_refused():
    with pytest.raises(CorpusError, match=r"corpus\.id_column: column 'doc id' cannot be a Milvus field name"):
        check_load_target({}, MilvusSettings(), id_column="doc id", server=OLD)


def test_uint64_column_or_id_is_refused():
    with pytest.raises(CorpusError, match=r"carried column 'h' is uint64"):
        check_load_target({"h": pa.uint64()}, MilvusSettings(), server=OLD)
    with pytest.raises(CorpusError, match=r"id column 'id' \(corpus\.id_column\) is uint64"):
        check_load_target({}, MilvusSettings(), id_type=pa.uint64(), server=OLD)


def test_text_over_varchar_cap_is_refused_naming_file_row_and_column(tmp_path):
    files, types = _corpus(tmp_path, body=["short", None, "x" * 65_536, "y"])
    with pytest.raises(CorpusError, match=r"a\.parquet: row 2 of carried column 'body' holds 65536 bytes; "
                                          r"Milvus text values hold at most 65535"):
        check_load_target(types, MilvusSettings(), files=files, server=NEW)


def test_infinity_is_refused_but_nan_counts_as_a_null(tmp_path):
    files, types = _corpus(tmp_path, score=[1.0, float("nan"), None, 2.0, float("-inf")])
    with pytest.raises(CorpusError, match=r"a\.parquet: row 4 of carried column 'score' is -inf"):
        check_load_target(types, MilvusSettings(), files=files, server=NEW)
    files, types = _corpus(tmp_path, score=[1.0, float("nan"), None, 2.0])
    check = check_load_target(types, MilvusSettings(), files=files, server=OLD)
    assert check.columns["score"].nulls == 2 and check.layout.dynamic == ("score",)


def test_summary_says_where_each_column_goes_on_a_server_without_nullable_fields(tmp_path):
    at = datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    files, types = _corpus(tmp_path, title=["a", None, "b"], n=[1, 2, 3],
                           at=pa.array([at, None, at], pa.timestamp("us", "UTC")))
    check = check_load_target(types, MilvusSettings(uri="embedded"), files=files, server=OLD)
    assert check.fill == "bulk (import copies)"
    lines = check.summary().splitlines()
    assert lines[0] == "load target: Milvus v2.3.5-lite (no nullable fields) at embedded; fill: bulk (import copies)"
    assert lines[1:] == [
        "  title: string, 1 null(s) → key of the dynamic field (a null is an absent key)",
        "  n: int64, 0 null(s) → field",
        "  at: timestamp[us, tz=UTC] as string, 1 null(s) → key of the dynamic field (a null is an absent key)"]
    new = check_load_target(types, MilvusSettings(uri="http://milvus:19530"), files=files, server=NEW)
    assert new.fill == "bulk" and new.layout.nullable and "title: string, 1 null(s) → nullable field" in new.summary()


def test_server_on_local_storage_cannot_import_an_s3_output_so_auto_inserts_and_bulk_is_refused(tmp_path):
    """No milvus.bucket (the server reads its own disk) and output.path on s3://: a remote server could never read
    the shards — auto inserts and says why, bulk is refused naming milvus.bucket; the embedded one (this machine)
    gets the shards copied to its disk."""
    files, types = _corpus(tmp_path, title=["a", None, "b"])
    remote = MilvusSettings(uri="http://m:19530")
    auto = check_load_target(types, remote, files=files, server=OLD, output="s3://b/out")
    assert auto.fill == "insert" and "s3://b/out is on object storage and the Milvus server at http://m:19530 " \
        "imports files from its own local disk (milvus.bucket is not set): the load inserts" in auto.summary()
    with pytest.raises(ConfigError, match=r"milvus\.mode = \"bulk\": output\.path s3://b/out is on object storage.*"
                                          r"set milvus\.bucket to the bucket of the server's MinIO/S3 storage"):
        check_load_target(types, remote.model_copy(update={"mode": "bulk"}), files=files, server=NEW,
                          output="s3://b/out")
    local = check_load_target(types, remote, files=files, server=OLD, output=str(tmp_path / "out"))
    assert local.fill == "bulk (import copies)" and local.notes == []
    emb = check_load_target(types, MilvusSettings(uri="embedded", data_dir="/d/milvus"), files=files, server=OLD,
                            output="s3://b/out")
    assert emb.fill == "bulk (import copies)" and emb.notes == [
        "the shards are copied from s3://b/out to /d/milvus/_import/<collection>/ for the embedded server (on local "
        "storage), and removed after the import"]


def test_server_on_a_bucket_bulk_imports_nulls_too_and_the_summary_says_where_it_reads_the_shards(tmp_path):
    """milvus.bucket: import copies with $meta go into that bucket, so null-holding columns are bulk-imported
    (no insert fallback); the output in the bucket is read in place, elsewhere it is copied under import_root."""
    files, types = _corpus(tmp_path, title=["a", None, "b"])
    ms = MilvusSettings(uri="http://m:19530", bucket="milvus-data", mode="bulk")
    inside = check_load_target(types, ms, files=files, server=OLD, output="s3://milvus-data/runs/a")
    assert inside.fill == "bulk (import copies)" and inside.notes == [
        "the server imports the shards by key where they are: s3://milvus-data/runs/a/shards (in milvus.bucket; no "
        "copy)"]
    other = check_load_target(types, ms, files=files, server=NEW, output="s3://elsewhere/runs/a")
    assert other.fill == "bulk" and other.notes == [
        "the shards are copied to s3://milvus-data/jinabatch-import/<collection>/ (milvus.bucket, which "
        "s3://elsewhere/runs/a is not in) for the import, and removed after it"]
    ms = ms.model_copy(update={"import_root": "staging/jb"})
    disk = check_load_target(types, ms, files=files, server=NEW, output=str(tmp_path / "out"))
    assert "copied to s3://milvus-data/staging/jb/<collection>/" in disk.notes[0]


def test_bulk_mode_on_lite_and_too_many_fields_are_config_errors():
    with pytest.raises(ConfigError, match=r"milvus\.mode = \"bulk\" needs a Milvus server"):
        check_load_target({"a": pa.string()}, MilvusSettings(uri="x.db", mode="bulk"), server=LITE)
    with pytest.raises(ConfigError, match=r"corpus\.columns: 63 carried columns make 65 Milvus fields"):
        check_load_target({f"c{i}": pa.int64() for i in range(63)}, MilvusSettings(), server=NEW)


def test_probe_finds_capabilities_without_starting_a_server(tmp_path):
    """embedded with nothing on the port: the installed milvus package's server (2.3.5, no nullable fields);
    Lite: the installed milvus-lite (3.x, nullable fields); an unreachable remote server: a ConfigError now."""
    port = _free_port()
    emb = probe_server(MilvusSettings(uri="embedded", port=port, data_dir=str(tmp_path / "never")))
    assert emb.kind == "server" and emb.version.startswith("v2.3.5") and not emb.nullable
    assert not (tmp_path / "never").exists()
    lite = probe_server(MilvusSettings(uri=str(tmp_path / "x.db")))
    assert lite.kind == "lite" and lite.nullable and not (tmp_path / "x.db").exists()
    with pytest.raises(ConfigError, match=rf"milvus\.uri = 'http://127\.0\.0\.1:{port}': cannot reach Milvus.*"
                                          r"nothing has been sent yet"):
        probe_server(MilvusSettings(uri=f"http://127.0.0.1:{port}"), timeout=2)


def _big_corpus(tmp_path, bad: dict[str, tuple[int, int, object]] | None = None) -> list[Path]:
    """Three files of 3,000 rows in row groups of 500 with carried title (string, nulls) and score (float, NaNs);
    ``bad``: column -> (file, row, value) planted late in that file."""
    paths = []
    for f in range(3):
        title = [None if i % 7 == 0 else f"t{f}-{i}" for i in range(3000)]
        score = [float("nan") if i % 11 == 0 else i / 3 for i in range(3000)]
        for col, (bf, row, value) in (bad or {}).items():
            if bf == f:
                (title if col == "title" else score)[row] = value
        path = tmp_path / "c" / f"p{f}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"id": [f"{f}-{i}" for i in range(3000)], "text": ["x"] * 3000, "title": title,
                                 "score": score}), path, row_group_size=500)
        paths.append(path)
    return paths


@pytest.mark.slow
def test_above_the_threshold_the_columns_are_read_on_ray_data_not_in_the_driver(tmp_path, ray_local, monkeypatch):
    """With local_max_rows below the corpus, no carried column is read in this process (every Parquet read here
    fails), yet the facts are those of the in-process scan; a text over 65,535 bytes and a -inf planted late in
    the second and third files are refused naming the first of them in corpus order, as in process."""
    from jinabatch.config import parse_config
    from jinabatch.embed.plan import plan_corpus
    from jinabatch.storage import Storage

    types = {"title": pa.string(), "score": pa.float64()}

    def planned(paths_dir, out):
        return plan_corpus(parse_config({"corpus": {"path": str(paths_dir), "columns": list(types)}}),
                           Storage.open(out)).files

    _big_corpus(tmp_path / "ok")
    files = planned(tmp_path / "ok" / "c", tmp_path / "out-ok")
    _big_corpus(tmp_path / "bad", {"title": (1, 2600, "y" * 70_000), "score": (2, 10, float("-inf"))})
    bad_files = planned(tmp_path / "bad" / "c", tmp_path / "out-bad")
    local = check_load_target(types, MilvusSettings(), files=files, server=OLD)
    with pytest.raises(CorpusError) as in_process:
        check_load_target(types, MilvusSettings(), files=bad_files, server=OLD)

    def no_reads_here(*a, **k):
        raise AssertionError("a carried column was read in the driver process")

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", no_reads_here)
    monkeypatch.setattr(pq.ParquetFile, "read_row_group", no_reads_here)
    monkeypatch.setattr(pq.ParquetFile, "read", no_reads_here)
    on_ray = check_load_target(types, MilvusSettings(), files=files, server=OLD, local_max_rows=0,
                               ray_context=lambda: contextlib.nullcontext())
    assert {n: (c.nulls, c.longest) for n, c in on_ray.columns.items()} == \
        {n: (c.nulls, c.longest) for n, c in local.columns.items()} == {"title": (1287, 7), "score": (819, 0)}
    with pytest.raises(CorpusError) as distributed:
        check_load_target(types, MilvusSettings(), files=bad_files, server=OLD, local_max_rows=0)
    assert str(distributed.value) == str(in_process.value)
    assert re.search(r"p1\.parquet: row 2600 of carried column 'title' holds 70000 bytes", str(distributed.value))


def test_a_carried_column_from_a_hive_path_is_checked_by_type_and_not_read_from_the_files(tmp_path):
    """lang comes from lang=en/ in the path, not from the files: the scan reads only title from them."""
    from jinabatch.config import parse_config
    from jinabatch.embed.plan import plan_corpus
    from jinabatch.storage import Storage

    path = tmp_path / "c" / "lang=en" / "a.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["x", "y"], "title": ["t", None]}), path)
    plan = plan_corpus(parse_config({"corpus": {"path": str(tmp_path / "c"), "columns": ["lang", "title"]}}),
                       Storage.open(tmp_path / "out"))
    check = check_load_target(plan.column_types, MilvusSettings(), files=plan.files, server=OLD)
    assert (check.columns["title"].nulls, check.columns["lang"].nulls) == (1, 0)

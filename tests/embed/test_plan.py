"""Corpus planning: files → checked → shards of whole row groups; bad input refused before any API call."""
from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from corpus_gen import make_corpus, write_rows
from jinabatch.config import CorpusSettings
from jinabatch.embed.plan import list_files, plan_corpus
from jinabatch.embed.driver import run_embed
from jinabatch.errors import CorpusError


def _write_groups(path: Path, sizes: list[int], start: int = 0) -> Path:
    """One file whose row groups have exactly ``sizes`` rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(path, pa.schema([("id", pa.int64()), ("text", pa.string())])) as w:
        for n in sizes:
            w.write_table(pa.table({"id": list(range(start, start + n)), "text": [f"t {i}" for i in range(n)]}))
            start += n
    return path


def _cs(path, **kw) -> CorpusSettings:
    return CorpusSettings(path=str(path), **kw)


@pytest.mark.parametrize("rows_per_shard, expect", [
    (200, [(0, 2, 0, 200), (2, 4, 200, 350)]),          # groups packed up to the budget
    (150, [(0, 1, 0, 100), (1, 2, 100, 200), (2, 4, 200, 350)]),
    (50, [(0, 1, 0, 100), (1, 2, 100, 200), (2, 3, 200, 300), (3, 4, 300, 350)]),  # a group never splits
    (10_000, [(0, 4, 0, 350)]),
])
def test_shards_are_whole_row_groups_up_to_rows_per_shard(tmp_path, rows_per_shard, expect):
    """Row groups [100, 100, 100, 50] cut by rows_per_shard: contiguous, complete, never a split group."""
    f = _write_groups(tmp_path / "a.parquet", [100, 100, 100, 50])
    plan = plan_corpus(_cs(f, rows_per_shard=rows_per_shard))
    assert [(s.rg_start, s.rg_stop, s.row_start, s.row_stop) for s in plan.shards] == expect
    assert plan.rows == 350


def test_shard_indexes_run_across_files_in_sorted_order(tmp_path):
    """Shards are numbered across files (sorted by path), names are shard-NNNNN, each file's rows start at 0."""
    _write_groups(tmp_path / "b.parquet", [30, 30])
    _write_groups(tmp_path / "a.parquet", [30], start=100)
    plan = plan_corpus(_cs(tmp_path, rows_per_shard=30))
    assert [(Path(s.file).name, s.row_start, s.name) for s in plan.shards] == [
        ("a.parquet", 0, "shard-00000"), ("b.parquet", 0, "shard-00001"), ("b.parquet", 30, "shard-00002")]
    assert plan.id_type == pa.int64() and plan.files == sorted(plan.files)


def test_list_files_recurses_skips_hidden_and_takes_globs(tmp_path):
    """A folder is searched recursively, skipping ._-prefixed files; a glob and a single file work too."""
    _write_groups(tmp_path / "x" / "sub" / "a.parquet", [5])
    _write_groups(tmp_path / "x" / "b.parquet", [5], start=5)
    (tmp_path / "x" / "_SUCCESS").write_text("")
    (tmp_path / "x" / ".crc").write_text("")
    assert [Path(f).name for f in list_files(str(tmp_path / "x"))] == ["b.parquet", "a.parquet"]
    assert [Path(f).name for f in list_files(str(tmp_path / "x" / "**" / "*.parquet"))] == ["b.parquet", "a.parquet"]
    assert list_files(str(tmp_path / "x" / "b.parquet")) == [str((tmp_path / "x" / "b.parquet").resolve())]


def test_duplicates_across_files_first_wins_and_later_ones_name_it(tmp_path):
    """String ids repeated in a later file (and within it): every later occurrence points at the first."""
    write_rows(tmp_path / "a.parquet", [{"id": f"k{i}", "text": "t"} for i in range(5)], id_type=pa.string(),
               carried=False)
    write_rows(tmp_path / "b.parquet", [{"id": i, "text": "t"} for i in ("z", "k3", "k3", "k0")],
               id_type=pa.string(), carried=False)
    plan = plan_corpus(_cs(tmp_path))
    a, b = plan.shards
    assert a.duplicates == {}
    assert b.duplicates == {1: "duplicate id (first at a.parquet row 3)", 2: "duplicate id (first at a.parquet row 3)",
                            3: "duplicate id (first at a.parquet row 0)"}


def test_duplicates_are_kept_with_the_shard_that_holds_the_row(tmp_path):
    """A duplicate in a file's second shard is listed in that shard, by its row index in the file."""
    _write_groups(tmp_path / "a.parquet", [10, 10])
    _write_groups(tmp_path / "b.parquet", [10, 10], start=100)
    write_rows(tmp_path / "c.parquet", [{"id": i, "text": "t"} for i in (500, 501, 115)], carried=False)
    plan = plan_corpus(_cs(tmp_path, rows_per_shard=10))
    dups = {s.name: s.duplicates for s in plan.shards if s.duplicates}
    assert dups == {"shard-00004": {2: "duplicate id (first at b.parquet row 15)"}}


# -- bad input: refused before any request -------------------------------------------------------

def _bad_int_text(d: Path) -> None:
    pq.write_table(pa.table({"id": [1], "text": [5]}), d / "a.parquet")


def _not_parquet(d: Path) -> None:
    _write_groups(d / "a.parquet", [3])
    (d / "notes.csv").write_text("id,text\n1,hello\n")


def _missing_column(d: Path) -> None:
    _write_groups(d / "a.parquet", [3])
    pq.write_table(pa.table({"id": [9], "body": ["x"]}), d / "b.parquet")


def _bad_carried(d: Path) -> None:
    pq.write_table(pa.table({"id": [1], "text": ["x"], "title": [[1, 2]]}), d / "a.parquet")


def _id_types_differ(d: Path) -> None:
    _write_groups(d / "a.parquet", [3])
    pq.write_table(pa.table({"id": ["s"], "text": ["x"]}), d / "b.parquet")


def _carried_types_differ(d: Path) -> None:
    pq.write_table(pa.table({"id": [1], "text": ["x"], "title": ["a"]}), d / "a.parquet")
    pq.write_table(pa.table({"id": [2], "text": ["y"], "title": [3]}), d / "b.parquet")


@pytest.mark.parametrize("make, columns, needles", [
    (_bad_int_text, [], ["a.parquet", "'text'", "int64", "string"]),
    (_not_parquet, [], ["notes.csv", "not a readable Parquet file", "remove it"]),
    (_missing_column, [], ["b.parquet", "'text'", "corpus.text_column", "not found"]),
    (_bad_carried, ["title"], ["a.parquet", "'title'", "corpus.columns"]),
    (_id_types_differ, [], ["'id'", "int64", "string"]),
    (_carried_types_differ, ["title"], ["b.parquet", "'title'", "a.parquet"]),
], ids=["text-not-string", "not-parquet", "missing-column", "carried-list", "id-types-differ",
        "carried-types-differ"])
def test_bad_input_is_refused_naming_file_and_column_before_any_request(
        tmp_path, make, columns, needles, embed_config, jina_server):
    """run_embed raises CorpusError naming the file and column, and the server has seen no request."""
    (tmp_path / "c").mkdir()
    make(tmp_path / "c")
    cfg = embed_config(tmp_path / "c", tmp_path / "out", jina_server.url, corpus={"columns": columns})
    before = jina_server.stats()["requests"]
    with pytest.raises(CorpusError) as e:
        run_embed(cfg, progress=False)
    for needle in needles:
        assert needle in str(e.value), f"{needle!r} not in {e.value}"
    assert jina_server.stats()["requests"] == before


def test_missing_path_is_refused_naming_the_setting(tmp_path):
    """corpus.path that matches nothing: CorpusError naming the path and what to give."""
    with pytest.raises(CorpusError, match=r"corpus.path = .*nowhere.*no files found"):
        plan_corpus(_cs(tmp_path / "nowhere"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_is_refused_naming_it(tmp_path):
    """A file without read permission: CorpusError naming the file and saying to fix its permissions."""
    f = _write_groups(tmp_path / "a.parquet", [3])
    f.chmod(0)
    try:
        with pytest.raises(CorpusError, match="a.parquet.*permission"):
            plan_corpus(_cs(tmp_path))
    finally:
        f.chmod(0o644)


def test_truncated_file_is_refused_naming_it(tmp_path):
    """A Parquet file cut short (no footer): CorpusError naming the file and what to do."""
    f = _write_groups(tmp_path / "a.parquet", [3])
    f.write_bytes(f.read_bytes()[:20])  # cut short: the footer is gone
    with pytest.raises(CorpusError, match="a.parquet: not a readable Parquet file.*convert it to Parquet"):
        plan_corpus(_cs(tmp_path))


def test_generated_corpus_plans_to_the_expected_shards(tmp_path):
    """The test generator's corpus: 3 files x 300 rows in 100-row groups → 2 shards per file at 200 rows."""
    corpus = make_corpus(tmp_path, files=3, rows_per_file=300, row_group_size=100)
    plan = plan_corpus(_cs(tmp_path, rows_per_shard=200, columns=["title", "n", "score", "flag"]))
    assert [s.rows for s in plan.shards] == [200, 100] * 3 and plan.rows == len(corpus.rows)
    assert plan.column_types == {"title": pa.string(), "n": pa.int32(), "score": pa.float64(), "flag": pa.bool_()}

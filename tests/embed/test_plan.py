"""Corpus planning: files → checked → shards of rows_per_shard rows whatever the files look like; duplicates
found once; the plan kept in the output and reused; bad input refused before any API call."""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from corpus_gen import make_corpus, write_rows
from jinabatch.config import parse_config
from jinabatch.embed.corpus import list_corpus
from jinabatch.embed.dedup import read_duplicates
from jinabatch.embed.driver import run_embed
from jinabatch.embed.plan import plan_corpus
from jinabatch.errors import CorpusError
from jinabatch.storage import Storage


def _write_groups(path: Path, sizes: list[int], start: int = 0) -> Path:
    """One file whose row groups have exactly ``sizes`` rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(path, pa.schema([("id", pa.int64()), ("text", pa.string())])) as w:
        for n in sizes:
            w.write_table(pa.table({"id": list(range(start, start + n)), "text": [f"t {i}" for i in range(n)]}))
            start += n
    return path


def _cfg(path, **corpus):
    return parse_config({"corpus": {"path": str(path), **corpus}})


def _plan(path, out, **corpus):
    return plan_corpus(_cfg(path, **corpus), Storage.open(out))


def _pieces(shard) -> list[tuple[str, int, int]]:
    return [(Path(p.file).name, p.row_start, p.row_stop) for p in shard.pieces]


@pytest.mark.parametrize("rows_per_shard, expect", [
    (200, [(0, 200), (200, 350)]),
    (150, [(0, 150), (150, 300), (300, 350)]),  # a row group is split where a shard ends
    (50, [(i, min(i + 50, 350)) for i in range(0, 350, 50)]),
    (10_000, [(0, 350)]),
])
def test_shards_are_rows_per_shard_consecutive_rows_whatever_the_row_groups(tmp_path, rows_per_shard, expect):
    """Row groups [100, 100, 100, 50] cut every rows_per_shard rows: contiguous, complete, the last one shorter."""
    f = _write_groups(tmp_path / "c" / "a.parquet", [100, 100, 100, 50])
    plan = _plan(f, tmp_path / "out", rows_per_shard=rows_per_shard)
    assert [(s.start, s.stop) for s in plan.shards] == expect
    assert [_pieces(s) for s in plan.shards] == [[("a.parquet", a, b)] for a, b in expect]
    assert plan.rows == 350 and [s.name for s in plan.shards][:2] == ["shard-00000", "shard-00001"][:len(expect)]


def test_one_giant_row_group_becomes_many_shards(tmp_path):
    """A file written with pyarrow defaults (one 200,000-row row group) plans into 40 shards at 5,000."""
    (tmp_path / "c").mkdir()
    pq.write_table(pa.table({"id": range(200_000), "text": ["x"] * 200_000}), tmp_path / "c" / "big.parquet",
                   row_group_size=1_000_000)
    plan = _plan(tmp_path / "c", tmp_path / "out", rows_per_shard=5000)
    assert pq.read_metadata(tmp_path / "c" / "big.parquet").num_row_groups == 1
    assert len(plan.shards) == 40 and {s.rows for s in plan.shards} == {5000}
    assert _pieces(plan.shards[7]) == [("big.parquet", 35_000, 40_000)]


def test_small_files_are_grouped_into_one_shard(tmp_path):
    """300 files of 20 rows at 1,000 rows per shard: 6 shards of 50 pieces each, in corpus (path) order."""
    for f in range(300):
        _write_groups(tmp_path / "c" / f"part-{f:04d}.parquet", [20], start=f * 20)
    plan = _plan(tmp_path / "c", tmp_path / "out", rows_per_shard=1000)
    assert [s.rows for s in plan.shards] == [1000] * 6
    assert [len(s.pieces) for s in plan.shards] == [50] * 6
    assert _pieces(plan.shards[1])[:2] == [("part-0050.parquet", 0, 20), ("part-0051.parquet", 0, 20)]


def test_a_mix_of_big_and_tiny_files_cuts_evenly_across_them(tmp_path):
    """A 2,500-row row group between tiny files: every shard but the last has exactly rows_per_shard rows."""
    _write_groups(tmp_path / "c" / "a.parquet", [30])
    _write_groups(tmp_path / "c" / "b.parquet", [2500], start=100)
    for f in range(10):
        _write_groups(tmp_path / "c" / f"c{f}.parquet", [7], start=10_000 + 10 * f)
    plan = _plan(tmp_path / "c", tmp_path / "out", rows_per_shard=1000)
    assert [s.rows for s in plan.shards] == [1000, 1000, 600]
    assert _pieces(plan.shards[0]) == [("a.parquet", 0, 30), ("b.parquet", 0, 970)]
    assert _pieces(plan.shards[2])[:2] == [("b.parquet", 1970, 2500), ("c0.parquet", 0, 7)]


def test_list_corpus_recurses_skips_hidden_and_takes_globs(tmp_path):
    """A folder is searched recursively, skipping ._-prefixed files and folders; a glob and a single file work."""
    _write_groups(tmp_path / "x" / "sub" / "a.parquet", [5])
    _write_groups(tmp_path / "x" / "b.parquet", [5], start=5)
    _write_groups(tmp_path / "x" / "_plan" / "files.parquet", [5], start=50)
    (tmp_path / "x" / "_SUCCESS").write_text("")
    (tmp_path / "x" / ".crc").write_text("")

    def names(path):
        root, files = list_corpus(_cfg(path).corpus)
        return [Path(root.uri_of(f.path)).relative_to(tmp_path / "x").as_posix() for f in files]

    assert names(tmp_path / "x") == ["b.parquet", "sub/a.parquet"]
    assert names(tmp_path / "x" / "**" / "*.parquet") == ["b.parquet", "sub/a.parquet"]
    assert names(tmp_path / "x" / "b.parquet") == ["b.parquet"]


def test_duplicates_across_files_first_wins_and_later_ones_name_it(tmp_path):
    """String ids repeated in a later file (and within it): every later occurrence points at the first."""
    write_rows(tmp_path / "c" / "a.parquet", [{"id": f"k{i}", "text": "t"} for i in range(5)], id_type=pa.string(),
               carried=False)
    write_rows(tmp_path / "c" / "b.parquet", [{"id": i, "text": "t"} for i in ("z", "k3", "k3", "k0")],
               id_type=pa.string(), carried=False)
    plan = _plan(tmp_path / "c", tmp_path / "out")
    assert plan.duplicates == 3
    out = Storage.open(tmp_path / "out")
    assert read_duplicates(out, 0, 5) == {}
    assert read_duplicates(out, 5, 9) == {6: "duplicate id (first at a.parquet row 3)",
                                          7: "duplicate id (first at a.parquet row 3)",
                                          8: "duplicate id (first at a.parquet row 0)"}


def test_duplicates_are_found_by_position_inside_each_shards_range(tmp_path):
    """A duplicate at corpus position 42 belongs to the shard [40, 50) and names its first occurrence."""
    _write_groups(tmp_path / "c" / "a.parquet", [10, 10])
    _write_groups(tmp_path / "c" / "b.parquet", [10, 10], start=100)
    write_rows(tmp_path / "c" / "c.parquet", [{"id": i, "text": "t"} for i in (500, 501, 115)], carried=False)
    plan = _plan(tmp_path / "c", tmp_path / "out", rows_per_shard=10)
    out = Storage.open(tmp_path / "out")
    found = {s.name: read_duplicates(out, s.start, s.stop) for s in plan.shards}
    assert {k: v for k, v in found.items() if v} == {"shard-00004": {42: "duplicate id (first at b.parquet row 15)"}}


@pytest.mark.slow
def test_ray_data_duplicate_pass_finds_what_the_in_process_pass_finds(tmp_path, ray_local):
    """The distributed pass (Ray Data groupby over the ids) and the in-process one write the same table."""
    rows = [{"id": f"d{i % 700}" if i % 5 == 0 else f"u{i}", "text": "t"} for i in range(3000)]
    for f in range(3):
        write_rows(tmp_path / "c" / f"p{f}.parquet", rows[f * 1000:(f + 1) * 1000], id_type=pa.string(),
                   row_group_size=128, carried=False)
    cfg = _cfg(tmp_path / "c", rows_per_shard=500)
    local = plan_corpus(cfg, Storage.open(tmp_path / "a"))
    distributed = plan_corpus(cfg, Storage.open(tmp_path / "b"), local_max_rows=0)
    assert local.duplicates == distributed.duplicates > 0
    a = pq.read_table(tmp_path / "a" / "_plan" / "duplicates.parquet")
    b = pq.read_table(tmp_path / "b" / "_plan" / "duplicates.parquet")
    assert a.equals(b) and a["pos"].to_pylist() == sorted(a["pos"].to_pylist())


def test_the_plan_is_kept_in_the_output_and_reused_until_the_corpus_changes(tmp_path, monkeypatch):
    """Same corpus and settings: the stored plan is reused (no footer opened); a rewritten file re-plans."""
    _write_groups(tmp_path / "c" / "a.parquet", [50, 50])
    _write_groups(tmp_path / "c" / "b.parquet", [30], start=100)
    first = _plan(tmp_path / "c", tmp_path / "out", rows_per_shard=40)
    import jinabatch.embed.plan as plan_mod

    opened = []
    monkeypatch.setattr(plan_mod, "inspect_files", lambda *a, **k: opened.append(1) or pytest.fail("re-inspected"))
    again = _plan(tmp_path / "c", tmp_path / "out", rows_per_shard=40)
    assert again.reused and not opened
    assert [(s.start, s.stop, s.pieces) for s in again.shards] == [(s.start, s.stop, s.pieces) for s in first.shards]
    assert again.id_type == first.id_type and again.duplicates == first.duplicates
    monkeypatch.undo()
    time.sleep(0.01)
    _write_groups(tmp_path / "c" / "b.parquet", [35], start=100)  # the corpus changed
    changed = _plan(tmp_path / "c", tmp_path / "out", rows_per_shard=40)
    assert not changed.reused and changed.rows == 135
    other = _plan(tmp_path / "c", tmp_path / "out", rows_per_shard=20)  # other settings
    assert not other.reused and len(other.shards) == 7


def test_hive_partition_folders_carry_their_values_as_columns(tmp_path):
    """lang=en/part-0.parquet with corpus.columns = ["lang", "year"]: typed columns from the path."""
    for lang in ("de", "en"):
        for year in (2020, 2021):
            _write_groups(tmp_path / "c" / f"lang={lang}" / f"year={year}" / "part-0.parquet", [5],
                          start=year * 10 + (lang == "en") * 1000)
    plan = _plan(tmp_path / "c", tmp_path / "out", columns=["lang", "year"], rows_per_shard=10)
    assert plan.column_types == {"lang": pa.string(), "year": pa.int32()}
    assert [dict(p.partition) for p in plan.shards[0].pieces] == [{"lang": "de", "year": 2020},
                                                                  {"lang": "de", "year": 2021}]

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
        _plan(tmp_path / "nowhere", tmp_path / "out")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_is_refused_naming_it(tmp_path):
    """A file without read permission: CorpusError naming the file and saying to fix its permissions."""
    f = _write_groups(tmp_path / "a.parquet", [3])
    f.chmod(0)
    try:
        with pytest.raises(CorpusError, match="a.parquet.*permission"):
            _plan(tmp_path, tmp_path / "out")
    finally:
        f.chmod(0o644)


def test_truncated_file_is_refused_naming_it(tmp_path):
    """A Parquet file cut short (no footer): CorpusError naming the file and what to do."""
    f = _write_groups(tmp_path / "a.parquet", [3])
    f.write_bytes(f.read_bytes()[:20])  # cut short: the footer is gone
    with pytest.raises(CorpusError, match="a.parquet: not a readable Parquet file.*convert it to Parquet"):
        _plan(tmp_path, tmp_path / "out")


def test_generated_corpus_plans_to_the_expected_shards(tmp_path):
    """The test generator's corpus: 3 files x 300 rows at 200 rows per shard → 4 full shards and 100 rows."""
    corpus = make_corpus(tmp_path / "c", files=3, rows_per_file=300, row_group_size=100)
    plan = _plan(tmp_path / "c", tmp_path / "out", rows_per_shard=200, columns=["title", "n", "score", "flag"])
    assert [s.rows for s in plan.shards] == [200, 200, 200, 200, 100] and plan.rows == len(corpus.rows)
    assert plan.column_types == {"title": pa.string(), "n": pa.int32(), "score": pa.float64(), "flag": pa.bool_()}


def test_scattered_positions_are_read_as_runs_each_row_with_its_file_row_and_position(tmp_path):
    """A delta's shard reads scattered corpus positions (embed.rows._pieces → reader.read_pieces): across files and
    row groups of uneven sizes, runs that cross a row group's edge, an empty file between: exactly those rows, each
    with its file, row in the file and corpus position."""
    from jinabatch.embed.reader import read_pieces
    from jinabatch.embed.rows import _pieces as pieces_at

    _write_groups(tmp_path / "c" / "a.parquet", [100, 100, 50], start=0)
    _write_groups(tmp_path / "c" / "b.parquet", [], start=250)
    _write_groups(tmp_path / "c" / "c.parquet", [30, 70, 100], start=250)
    plan = _plan(tmp_path / "c", tmp_path / "out", rows_per_shard=1000)
    positions = np.array([0, 5, 6, 7, 99, 100, 101, 249, 250, 251, 299, 300, 449], np.int64)
    runs = pieces_at(plan.files, positions)
    assert [(Path(p.file).name, p.row_start, p.row_stop, pos) for p, pos in runs] == [
        ("a.parquet", 0, 1, 0), ("a.parquet", 5, 8, 5), ("a.parquet", 99, 102, 99), ("a.parquet", 249, 250, 249),
        ("c.parquet", 0, 2, 250), ("c.parquet", 49, 51, 299), ("c.parquet", 199, 200, 449)]
    got = []
    for b in read_pieces(runs, ["id", "text"], {}, _cfg(tmp_path).storage, batch_rows=16):
        for k, i in enumerate(b.table.column("id").to_pylist()):
            got.append((Path(b.file).name, b.row0 + k, b.pos0 + k, i))
    # ids were written as the corpus position (start= above), so each row's id is its position
    assert [g[2] for g in got] == positions.tolist() and [g[3] for g in got] == positions.tolist()
    assert [(f, r) for f, r, *_ in got] == [("a.parquet", p) if p < 250 else ("c.parquet", p - 250) for p in positions]

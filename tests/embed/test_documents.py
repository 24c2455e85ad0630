"""Late chunking's plan: shard edges never split a document (a shard runs over rows_per_shard to finish one),
a document whose rows are not consecutive is refused naming it and the fix, and both engines agree."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jinabatch.config import parse_config
from jinabatch.embed.plan import cut_shards, plan_corpus
from jinabatch.errors import CorpusError
from jinabatch.storage import Storage


def _write(path: Path, docs: list[str | None], start: int = 0, row_group_size: int = 4) -> None:
    """One row per entry of ``docs`` (its document), ids from ``start``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(docs)
    rows = range(start, start + n)
    pq.write_table(pa.table({"id": [f"r{i}" for i in rows], "text": [f"chunk {i}" for i in rows],
                             "doc": pa.array(docs, pa.string()), "seq": list(range(n))}),
                   path, row_group_size=row_group_size)


def _cfg(path, late: bool = True, rows_per_shard: int = 10, out: Path | None = None):
    corpus = {"path": str(path), "rows_per_shard": rows_per_shard}
    if late:
        corpus.update(document_column="doc", chunk_order_column="seq")
    return parse_config({"corpus": corpus, "jina": {"late_chunking": late},
                         **({"output": {"path": str(out)}} if out else {})})


def _docs(*lengths: int, prefix: str = "d") -> list[str]:
    return [f"{prefix}{k}" for k, n in enumerate(lengths) for _ in range(n)]


def _doc_shards(plan, docs: list[str | None]) -> dict[str, set[int]]:
    """document -> the shards its rows were planned into."""
    found: dict[str, set[int]] = {}
    for s in plan.shards:
        for pos in range(s.start, s.stop):
            if docs[pos] is not None:
                found.setdefault(docs[pos], set()).add(s.index)
    return found


def test_a_shard_edge_inside_a_document_moves_to_that_documents_end(tmp_path):
    """Documents of 4, 8, 7, 3, 12 rows over two files, rows_per_shard 10: every document in one shard; the edges
    at 10, 20, 30 move to 12, 22, 34; the document crossing the file boundary is one shard of two pieces."""
    docs = _docs(4, 8, 7, 3, 12)
    _write(tmp_path / "c" / "a.parquet", docs[:16])
    _write(tmp_path / "c" / "b.parquet", docs[16:], start=16)
    plan = plan_corpus(_cfg(tmp_path / "c"), Storage.open(tmp_path / "out"))
    assert [(s.start, s.stop) for s in plan.shards] == [(0, 12), (12, 22), (22, 34)]
    assert all(len(v) == 1 for v in _doc_shards(plan, docs).values())
    assert [(Path(p.file).name, p.row_start, p.row_stop) for p in plan.shards[1].pieces] == \
        [("a.parquet", 12, 16), ("b.parquet", 0, 6)]
    plain = plan_corpus(_cfg(tmp_path / "c", late=False), Storage.open(tmp_path / "plain"))
    assert [(s.start, s.stop) for s in plain.shards] == [(0, 10), (10, 20), (20, 30), (30, 34)]


def test_a_document_longer_than_several_shards_is_one_shard_and_no_shard_is_empty(tmp_path):
    """A 35-row document from row 3 with rows_per_shard 10: shards [0, 38), [38, 45) — the edges at 10, 20 and 30
    all fall inside it and move to its end; shard indices stay consecutive."""
    docs = _docs(3, 35, 7)
    _write(tmp_path / "c" / "a.parquet", docs)
    plan = plan_corpus(_cfg(tmp_path / "c"), Storage.open(tmp_path / "out"))
    assert [(s.index, s.start, s.stop) for s in plan.shards] == [(0, 0, 38), (1, 38, 45)]


def test_cut_shards_without_spans_cuts_every_rows_per_shard_rows():
    """No document spans (no late chunking): the cuts are exact multiples, the last shard shorter."""
    from jinabatch.embed.corpus import CorpusFile

    files = [CorpusFile("/a", "1-1", 25, (25,)), CorpusFile("/b", "1-1", 0, (), offset=25),
             CorpusFile("/c", "1-1", 6, (6,), offset=25)]
    assert [(s.start, s.stop) for s in cut_shards(files, 10)] == [(0, 10), (10, 20), (20, 30), (30, 31)]
    assert [(s.start, s.stop) for s in cut_shards(files, 10, [(8, 12), (19, 29)])] == [(0, 13), (13, 30), (30, 31)]
    assert cut_shards([], 10) == []


def test_rows_without_a_document_before_the_documents_are_fine(tmp_path):
    """Null documents (dead-lettered at embed time) at the start do not make any document scattered."""
    docs = [None, None, *_docs(5, 9)]
    _write(tmp_path / "c" / "a.parquet", docs)
    plan = plan_corpus(_cfg(tmp_path / "c"), Storage.open(tmp_path / "out"))
    assert [(s.start, s.stop) for s in plan.shards] == [(0, 16)]


@pytest.mark.parametrize("docs, name, where", [
    (["d0", "d0", "d1", "d0", "d1", "d2"], "d0", "a.parquet row 0 to"),  # interleaved
    (["d0", "d0", None, "d0", "d1", "d1"], "d0", "a.parquet row 0 to"),  # a row without a document between
])
def test_a_document_whose_rows_are_not_consecutive_is_refused_naming_it_and_the_fix(tmp_path, docs, name, where):
    _write(tmp_path / "c" / "a.parquet", docs)
    with pytest.raises(CorpusError) as e:
        plan_corpus(_cfg(tmp_path / "c"), Storage.open(tmp_path / "out"))
    msg = str(e.value)
    assert f"document {name!r}" in msg and where in msg and "a.parquet row 3" in msg
    assert "sort the corpus by 'doc'" in msg and "corpus.document_column" in msg


def test_a_rerun_reuses_the_plan_and_cuts_the_same_shards(tmp_path):
    """The spans are kept in _plan/documents.parquet: the reused plan has the same shards, keys included."""
    docs = _docs(4, 8, 7, 3, 12)
    _write(tmp_path / "c" / "a.parquet", docs)
    cfg = _cfg(tmp_path / "c")
    first = plan_corpus(cfg, Storage.open(tmp_path / "out"))
    again = plan_corpus(cfg, Storage.open(tmp_path / "out"))
    assert again.reused and [s.key for s in again.shards] == [s.key for s in first.shards]
    assert (tmp_path / "out" / "_plan" / "documents.parquet").exists()
    plain = plan_corpus(_cfg(tmp_path / "c", late=False), Storage.open(tmp_path / "out"))
    assert not plain.reused and len(plain.shards) == 4  # other settings: planned again, cut at multiples


@pytest.mark.slow
def test_ray_data_document_pass_finds_what_the_in_process_pass_finds(tmp_path, ray_local):
    """The distributed pass (Ray Data groupby of the document column) gives the same shards and the same refusal."""
    docs = _docs(*[(k * 7) % 23 + 1 for k in range(120)])
    for f, lo in enumerate(range(0, len(docs), 500)):
        _write(tmp_path / "c" / f"p{f}.parquet", docs[lo:lo + 500], start=lo, row_group_size=64)
    cfg = _cfg(tmp_path / "c", rows_per_shard=100)
    local = plan_corpus(cfg, Storage.open(tmp_path / "a"))
    distributed = plan_corpus(cfg, Storage.open(tmp_path / "b"), local_max_rows=0)
    assert [(s.start, s.stop) for s in local.shards] == [(s.start, s.stop) for s in distributed.shards]
    assert len(local.shards) > 1 and any(s.rows > 100 for s in local.shards)
    assert all(len(v) == 1 for v in _doc_shards(distributed, docs).values())
    scattered = docs[:310] + ["d5"] + docs[311:]  # the middle of d26
    _write(tmp_path / "s" / "a.parquet", scattered, row_group_size=64)
    with pytest.raises(CorpusError, match="document 'd5'.* to .*a.parquet row 310") as e:
        plan_corpus(_cfg(tmp_path / "s", rows_per_shard=100), Storage.open(tmp_path / "d"), local_max_rows=0)
    assert "and 1 other document" in str(e.value)  # the document whose row it took is scattered too


def test_the_plan_preview_says_shards_run_over_to_finish_documents(tmp_path):
    """jobs/plan.py's text names the largest shard when late chunking made one longer than rows_per_shard."""
    from jinabatch.embed.preview import format_preview, preview

    _write(tmp_path / "c" / "a.parquet", _docs(4, 8, 7, 3, 12))
    p, plan = preview(_cfg(tmp_path / "c", out=tmp_path / "out"))
    assert p.largest_shard == 12 == max(s.rows for s in plan.shards)
    assert "shards   3 of 10 rows (cut at document ends: the largest has 12)" in format_preview(p)

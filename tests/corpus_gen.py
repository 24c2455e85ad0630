"""Small Parquet corpora for the embed stage's tests, and readers that check an output folder against them.

``make_corpus(folder, ...)`` writes ``files`` Parquet files of ``rows_per_file`` rows in row groups of
``row_group_size``, with an id column (int64 or string), a text column and carried columns of several
types (string, int32, float64, bool), and returns a ``Corpus``: the rows in order with the file and row
index each came from. Texts are distinct and short (a few dozen tokens), so a corpus of a few thousand
rows embeds in seconds against the local server. ``rows=`` lets a test write exactly the rows it needs
(nulls, duplicates, long texts).

``read_output(out)`` reads every finished shard (never ``*.tmp-*``) into one table; ``expected_vectors``
recomputes what the fake model gives each text, so a test can compare row by row.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jinabatch.local_api import fakemodel

__all__ = ["Corpus", "make_corpus", "write_rows", "read_output", "read_dead_letters", "expected_vectors",
           "assert_vectors_match", "MODEL", "TASK", "DIMS", "CARRIED"]

MODEL, TASK, DIMS = "jina-embeddings-v3", "retrieval.passage", 64
CARRIED = ["title", "n", "score", "flag"]
_WORDS = ("river stone cloud pepper engine violin harbor meadow lantern quartz falcon orchard copper "
          "glacier thunder saffron canyon marble walnut ember velvet compass").split()


@dataclass
class Corpus:
    files: list[Path]
    rows: list[dict[str, Any]] = field(default_factory=list)  # id, text, carried..., _file, _row

    def by_id(self) -> dict[Any, dict[str, Any]]:
        return {r["id"]: r for r in self.rows}

    @property
    def ids(self) -> list[Any]:
        return [r["id"] for r in self.rows]


def _text(rng: random.Random, i: int) -> str:
    return f"doc {i} " + " ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 24)))


def write_rows(path: Path, rows: list[dict[str, Any]], *, id_type: pa.DataType = pa.int64(),
               row_group_size: int = 100, carried: bool = True) -> Path:
    """Write ``rows`` (dicts with id, text and optionally the carried columns) as one Parquet file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cols: dict[str, pa.Array] = {
        "id": pa.array([r["id"] for r in rows], type=id_type),
        "text": pa.array([r["text"] for r in rows], type=pa.string()),
    }
    if carried:
        cols["title"] = pa.array([r.get("title") for r in rows], type=pa.string())
        cols["n"] = pa.array([r.get("n") for r in rows], type=pa.int32())
        cols["score"] = pa.array([r.get("score") for r in rows], type=pa.float64())
        cols["flag"] = pa.array([r.get("flag") for r in rows], type=pa.bool_())
    pq.write_table(pa.table(cols), path, row_group_size=row_group_size)
    return path


def make_corpus(folder: str | Path, *, files: int = 3, rows_per_file: int = 300, row_group_size: int = 100,
                id_type: str = "int", seed: int = 0, start: int = 0) -> Corpus:
    """Write ``files`` Parquet files of distinct rows under ``folder``; ids are unique across files."""
    folder = Path(folder)
    rng = random.Random(seed)
    corpus = Corpus([])
    i = start
    for f in range(files):
        rows = []
        for r in range(rows_per_file):
            rows.append({"id": i if id_type == "int" else f"doc-{i:06d}", "text": _text(rng, i),
                         "title": f"title {i}", "n": i % 1000, "score": i / 7.0, "flag": i % 3 == 0,
                         "_file": f"part-{f:03d}.parquet", "_row": r})
            i += 1
        path = write_rows(folder / f"part-{f:03d}.parquet", rows,
                          id_type=pa.int64() if id_type == "int" else pa.string(), row_group_size=row_group_size)
        corpus.files.append(path)
        corpus.rows.extend(rows)
    return corpus


def read_output(out: str | Path) -> pa.Table:
    """Every finished shard of an output folder, concatenated in shard order (temp files ignored)."""
    files = sorted((Path(out) / "shards").glob("shard-*.parquet"))
    if not files:
        return pa.table({})
    return pa.concat_tables([pq.read_table(f) for f in files])


def read_dead_letters(out: str | Path) -> pa.Table | None:
    files = sorted((Path(out) / "dead_letter").glob("shard-*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files]) if files else None


def expected_vectors(texts: list[str], *, model: str = MODEL, task: str | None = TASK, dims: int = DIMS) -> np.ndarray:
    return fakemodel.embed(model, task, dims, texts)


def assert_vectors_match(table: pa.Table, text_of: dict[Any, str], *, model: str = MODEL, task: str | None = TASK,
                         dims: int = DIMS, id_column: str = "id") -> None:
    """Each output row's vector equals the fake model's vector of that row's own text (exactly)."""
    ids = table.column(id_column).to_pylist()
    got = np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)
    want = expected_vectors([text_of[i] for i in ids], model=model, task=task, dims=dims)
    assert got.shape == want.shape, f"output vectors {got.shape}, expected {want.shape}"
    bad = np.flatnonzero(~np.all(got == want, axis=1))
    assert len(bad) == 0, f"{len(bad)} rows carry a vector that is not their text's, e.g. id {ids[bad[0]]!r}"

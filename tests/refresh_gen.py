"""A corpus that changes night after night, for the tests and bench of refreshes (deltas, in-place loads).

``evolve(rows, folder, seed=..., edit=..., delete=..., add=...)`` edits, deletes and adds a share of the rows
(edits may hit rows edited or added before, deletes may hit rows added before), writes the new corpus under
``folder`` (each file of the old corpus keeps its name, new rows go to a file of their own) and returns the rows
and what changed: ``{"changed": ids, "deleted": ids, "new": ids}``.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from corpus_gen import write_rows

__all__ = ["evolve", "write_corpus"]


def write_corpus(folder: Path, rows: list[dict[str, Any]], row_group_size: int = 100) -> None:
    by_file: dict[str, list] = {}
    for r in rows:
        by_file.setdefault(r["_file"], []).append(r)
    for name, part in by_file.items():
        write_rows(Path(folder) / name, part, row_group_size=row_group_size)


def evolve(rows: list[dict[str, Any]], folder: Path, *, seed: int, edit: float, delete: float, add: float,
           first_new_id: int, row_group_size: int = 100) -> tuple[list[dict[str, Any]], dict[str, list]]:
    rng = random.Random(seed)
    rows = [dict(r) for r in rows]
    n = len(rows)
    n_edit, n_del, n_add = round(n * edit), round(n * delete), round(n * add)
    picks = rng.sample(range(n), k=n_edit + n_del)
    edited, deleted = picks[:n_edit], set(picks[n_edit:])
    for i in edited:
        rows[i]["text"] += f" revised {seed}"
        rows[i]["title"] = f"{rows[i]['title']} r{seed}"
    kept = [r for i, r in enumerate(rows) if i not in deleted]
    new = [{"id": first_new_id + k, "text": f"night {seed} brand new row {k} about copper lanterns",
            "title": f"new {seed}-{k}", "n": k, "score": 0.5, "flag": True, "_file": f"part-new-{seed:03d}.parquet"}
           for k in range(n_add)]
    out = kept + new
    write_corpus(folder, out, row_group_size)
    return out, {"changed": [rows[i]["id"] for i in edited], "deleted": [rows[i]["id"] for i in deleted],
                 "new": [r["id"] for r in new]}

"""The plan-time read of the carried columns: nulls, longest text, and the first value Milvus cannot hold.

``scan_columns(files, names)`` reads the carried columns of every row group once, converted as the shards will
hold them (``embed.columns.to_shard``: dates → ISO text, NaN → null), and returns per column the null count and
the longest text in bytes; it raises ``CorpusError`` naming the file, row and column of the first value (in
corpus order) that no Milvus field holds: a text over 65,535 bytes or ±infinity in a float column.

Like the duplicate-id pass (``embed.passes``), it runs in this process up to ``local_max_rows`` rows and on Ray
Data above: runs of row groups (up to ``ITEM_ROWS`` rows of one file) are scanned by tasks on the cluster and
only one small summary row per run and column comes back (``_summary``), so the driver never reads the columns
— at 10⁸–10⁹ rows, text included, that read was a single-process bottleneck. In process it stops at the first
offending run.
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ContextManager

import pyarrow as pa
import pyarrow.compute as pc

from ..config import StorageSettings
from ..embed.columns import to_shard
from ..embed.passes import LOCAL_MAX_ROWS, open_file, ray_data
from ..errors import CorpusError

__all__ = ["scan_columns", "ColumnScan", "MAX_VARCHAR"]

log = logging.getLogger(__name__)

MAX_VARCHAR = 65_535  # Milvus's cap on VARCHAR max_length (bytes); here, not in load.schema: no pymilvus on workers
SCAN_ROWS = 65_536  # rows read at a time: memory stays bounded whatever the row groups hold
ITEM_ROWS = 500_000  # rows of one work item (consecutive row groups of one file, opened once)

_SUMMARY = pa.schema([("file", pa.int64()), ("column", pa.string()), ("nulls", pa.int64()),
                      ("longest", pa.int64()), ("bad_row", pa.int64()), ("bad", pa.string())])


@dataclass
class ColumnScan:
    nulls: int = 0
    longest: int = 0  # longest text value in bytes (0 for other types)


def _items(files: Sequence[Any], storage: StorageSettings | None) -> list[dict[str, Any]]:
    """Work items: runs of consecutive row groups of one file, up to ``ITEM_ROWS`` rows (or one row group) —
    file index, uri, row groups ``[rg0, rg1)``, the run's first row in the file, its rows. A planned
    ``CorpusFile`` says its row groups; a plain path or URI is asked (its footer)."""
    items: list[dict[str, Any]] = []
    for i, f in enumerate(files):
        uri = str(getattr(f, "uri", f))
        sizes = getattr(f, "row_groups", None)
        if sizes is None:
            md = open_file(uri, storage).metadata
            sizes = [md.row_group(k).num_rows for k in range(md.num_row_groups)]
        row = 0
        for rg, n in enumerate(sizes):
            last = items[-1] if items else None
            if last and last["file"] == i and last["rows"] + n <= ITEM_ROWS:
                last["rg1"], last["rows"] = rg + 1, last["rows"] + n
            else:
                items.append({"file": i, "uri": uri, "rg0": rg, "rg1": rg + 1, "row0": row, "rows": n})
            row += n
    return items


def _check(col: pa.Array) -> tuple[int, int | None, str | None]:
    """(longest text in bytes, index of the first value Milvus cannot hold, what is wrong with it)."""
    longest = 0
    if pa.types.is_string(col.type) and len(col) - col.null_count:
        lengths = pc.binary_length(col)
        longest = pc.max(lengths).as_py() or 0
        if longest > MAX_VARCHAR:
            return longest, pc.index(lengths, longest).as_py(), (
                f"holds {longest} bytes; Milvus text values hold at most {MAX_VARCHAR} — shorten those values in the "
                "corpus or drop the column from corpus.columns")
    if pa.types.is_floating(col.type):
        inf = pc.is_inf(col)
        if pc.any(inf).as_py():
            at = pc.index(inf, True).as_py()
            return longest, at, (f"is {col[at].as_py()}; Milvus stores no infinite value — replace it (e.g. with "
                                 "null) in the corpus or drop the column from corpus.columns")
    return longest, None, None


def _summary(item: dict[str, Any], names: Sequence[str], storage: StorageSettings | None) -> pa.Table:
    """One row per carried column of one item (read in batches of ``SCAN_ROWS``): nulls, longest text, and the
    first value Milvus cannot hold (``bad_row``: its row in the file; ``bad``: what is wrong with it)."""
    pf = open_file(item["uri"], storage)
    here = [n for n in names if n in pf.schema_arrow.names]  # the others come from a Hive path: one value
    rows = {n: {"file": item["file"], "column": n, "nulls": 0, "longest": 0, "bad_row": None,
                "bad": None} for n in here}
    row = item["row0"]
    groups = list(range(item["rg0"], item["rg1"]))
    for rb in pf.iter_batches(batch_size=SCAN_ROWS, row_groups=groups, columns=here) if here else ():
        for n in here:
            col = to_shard(rb.column(n))
            longest, at, bad = _check(col)
            r = rows[n]
            r["nulls"] += col.null_count
            r["longest"] = max(r["longest"], longest)
            if at is not None and r["bad"] is None:
                r["bad_row"], r["bad"] = row + at, bad
        if any(r["bad"] for r in rows.values()):  # later rows cannot hold an earlier offence
            break
        row += rb.num_rows
    return pa.Table.from_pylist(list(rows.values()), schema=_SUMMARY)


def _summary_batch(batch: pa.Table, names: list[str], storage: StorageSettings | None) -> pa.Table:
    """Ray Data UDF: work items in, their summary rows out."""
    return pa.concat_tables([_summary(item, names, storage) for item in batch.to_pylist()])


def _on_ray(items: list[dict[str, Any]], names: list[str], storage: StorageSettings | None) -> pa.Table:
    import ray

    with ray_data():
        ds = ray.data.from_items(items, override_num_blocks=min(len(items), 2000))
        scanned = ds.map_batches(_summary_batch, batch_size=1, batch_format="pyarrow",
                                 fn_kwargs={"names": names, "storage": storage})
        parts = [t for t in ray.get(scanned.to_arrow_refs()) if t.num_rows]
    return pa.concat_tables(parts) if parts else _SUMMARY.empty_table()


def _in_process(items: list[dict[str, Any]], names: list[str], storage: StorageSettings | None) -> pa.Table:
    parts = []
    for item in items:
        parts.append(_summary(item, names, storage))
        if parts[-1]["bad"].null_count < parts[-1].num_rows:  # the first offending run: no need to go on
            break
    return pa.concat_tables(parts) if parts else _SUMMARY.empty_table()


def scan_columns(files: Sequence[str | Path | Any], names: Sequence[str], storage: StorageSettings | None = None, *,
                 local_max_rows: int = LOCAL_MAX_ROWS,
                 ray_context: Callable[[], ContextManager[Any]] = contextlib.nullcontext) -> dict[str, ColumnScan]:
    """Null counts and longest texts of the carried columns ``names`` over ``files`` (paths, URIs or planned
    ``CorpusFile``s, in corpus order); CorpusError naming file, row and column of the first value Milvus cannot
    hold. ``ray_context()`` makes Ray available for the distributed scan (above ``local_max_rows`` rows)."""
    names = list(names)
    found = {n: ColumnScan() for n in names}
    if not names or not files:
        return found
    items = _items(files, storage)
    rows = sum(i["rows"] for i in items)
    t0 = time.monotonic()
    if rows <= local_max_rows:
        summary, engine = _in_process(items, names, storage), "in process"
    else:
        with ray_context():
            summary, engine = _on_ray(items, names, storage), "Ray Data"
    bad = summary.filter(pc.is_valid(summary["bad"]))
    if bad.num_rows:  # the first in corpus order: file, then row
        first = bad.sort_by([("file", "ascending"), ("bad_row", "ascending")]).slice(0, 1).to_pylist()[0]
        uri = str(getattr(files[first["file"]], "uri", files[first["file"]]))
        raise CorpusError(f"{uri}: row {first['bad_row']} of carried column {first['column']!r} {first['bad']}")
    totals = summary.group_by("column").aggregate([("nulls", "sum"), ("longest", "max")])
    for n, nulls, longest in zip(*(totals[c].to_pylist() for c in ("column", "nulls_sum", "longest_max"))):
        found[n] = ColumnScan(nulls, longest)
    log.info("carried-column check (%s) over %d rows of %d column(s) in %.1fs", engine, rows, len(names),
             time.monotonic() - t0)
    return found

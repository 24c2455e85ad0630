"""Compaction: fold a chain of refreshes (a full output and its deltas) into one full output.

``compact(config, into)`` resolves ``output.path``'s chain — latest wins per id, a deletion removes it — with the
aggregate ``embed.chain`` describes (in process below ``LOCAL_MAX_ROWS`` rows, Ray Data above), then copies each
live row from the member shard that holds it, vectors and carried columns byte for byte: no request is sent.
Each member's shard becomes at most one shard of the new output (rows superseded or deleted left out), so the
work is one read of every member's shards and one write of the live rows.

The new output is a *full* output whose ``state`` is the chain head's: a collection loaded from the chain holds
the same rows, so the next refresh made against the compacted output (``output.previous``) still applies in place.
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, ContextManager

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..config import Config
from ..errors import ConfigError
from ..observe.records import CHAIN, ChainRecord, OutputRef
from ..observe.report import EmbedReport
from ..storage import Storage
from .chain import LOC_MASK, DEL_LOC, M32, bytes_under, chain_members, member_items, new_id
from .dedup import LOCAL_MAX_ROWS
from .incremental import member_side
from .passes import num_partitions, ray_data
from .shards import SHARDS

__all__ = ["compact", "live_codes"]

log = logging.getLogger("jinabatch.embed")


def _resolve_ray(items: list[dict[str, Any]], config: Config, rows: int) -> np.ndarray:
    import ray
    from ray.data.aggregate import Max

    with ray_data():
        ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items) // 4, 2000)))
        sides = ds.map_batches(_codes_batch, batch_size=4, batch_format="pyarrow",
                               fn_kwargs={"id_column": config.corpus.id_column, "settings": config.storage})
        joined = sides.groupby("id", num_partitions=num_partitions(rows)).aggregate(
            Max("pl", alias_name="pl")).materialize()
        return np.concatenate([ray.get(r)["pl"].to_numpy() for r in joined.to_arrow_refs()] or [np.empty(0, np.int64)])


def _codes_batch(batch: pa.Table, id_column: str, settings) -> pa.Table:
    return pa.concat_tables([member_side(i, id_column, settings) for i in batch.to_pylist()])


def live_codes(config: Config, members: list, *, local_max_rows: int = LOCAL_MAX_ROWS,
               ray_context: Callable[[], ContextManager[Any]] = contextlib.nullcontext) -> np.ndarray:
    """The location codes (embed.chain) of the rows a chain resolves to, sorted."""
    items = member_items(members)
    rows = sum(rec.rows_written + rec.deleted for _, rec in members)
    if rows <= local_max_rows:
        tables = [member_side(i, config.corpus.id_column, config.storage) for i in items]
        if not tables:
            return np.empty(0, np.int64)
        g = pa.concat_tables(tables).group_by("id").aggregate([("pl", "max")])
        pl = g["pl_max"].to_numpy()
    else:
        with ray_context():
            pl = _resolve_ray(items, config, rows)
    return np.sort(pl[(pl & LOC_MASK) != DEL_LOC])


def _copy_live(members: list, live: np.ndarray, dest: Storage) -> tuple[int, int]:
    """Copy every live row into ``dest``'s shards, one per member shard that has any; (rows, shards) written."""
    rows = shards = 0
    for k, (st, _) in enumerate(members, start=1):
        for f in st.list(SHARDS, recursive=False, pattern="shard-*.parquet"):
            index = int(f.path.rsplit("shard-", 1)[1].split(".")[0])
            lo = (k << 56) | (index << 32)
            take = live[np.searchsorted(live, lo):np.searchsorted(live, lo + M32 + 1)] & M32
            if not len(take):
                continue
            pf = pq.ParquetFile(st.open_input_file(f.path))
            table = pf.read().take(pa.array(take))
            sub = f"{SHARDS}/shard-{shards:05d}.parquet"
            tmp = dest.local_temp(sub)
            tmp.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table.replace_schema_metadata(pf.schema_arrow.metadata), tmp, row_group_size=8192,
                           use_dictionary=[n for n in table.column_names if n != "embedding"])
            dest.upload(tmp, sub)
            rows += len(take)
            shards += 1
    return rows, shards


def compact(config: Config, into: str | None = None, *, local_max_rows: int = LOCAL_MAX_ROWS,
            ray_context: Callable[[], ContextManager[Any]] = contextlib.nullcontext) -> EmbedReport:
    """Fold ``output.path``'s chain into one full output at ``into`` (default: ``output.path`` + ``-compacted``);
    returns its report (also written there)."""
    t0 = time.monotonic()
    head = Storage.open(config.output.path, config.storage)
    members = chain_members(head, config.storage)
    hrec = members[-1][1]
    dest = Storage.open(into or head.uri.rstrip("/") + "-compacted", config.storage)
    if dest.stat(CHAIN) is not None or dest.list(SHARDS):
        raise ConfigError(f"{dest.uri}: already holds an output; compact into a new folder (--into)")
    live = live_codes(config, members, local_max_rows=local_max_rows, ray_context=ray_context)
    rows, shards = _copy_live(members, live, dest)
    if rows != hrec.rows:
        raise ConfigError(f"{head.uri}: its chain resolves to {rows} rows but its _chain.json says {hrec.rows}; a "
                          "member was changed after the chain was made — embed into a new output without "
                          "output.previous")
    rep = EmbedReport.read(head)
    oid = new_id()
    rec = ChainRecord(kind="full", id=oid, state=hrec.state, members=[OutputRef(uri=dest.uri, id=oid)],
                      compacted_from=OutputRef(uri=head.uri, id=hrec.id), embedding=hrec.embedding, rows=rows,
                      rows_written=rows, bytes_written=bytes_under(dest, SHARDS))
    rep = rep.model_copy(update=dict(
        rows_in=rows, rows_embedded=rows, rows_dead_letter=0, rows_reused=rows, rows_written=None, tokens=0,
        requests=0, retries=0, http_429=0, shards_total=shards, shards_done=shards, shards_skipped=0,
        incremental=None, chain=rec, output=dest.uri, finished=True, dead_letter_reasons={}, failures=[],
        duration_s=round(time.monotonic() - t0, 3), keys={}))
    dest.write_json(CHAIN, rec.to_json())
    rep.write(dest)
    log.info("compacted the chain of %d output(s) ending at %s into %s: %d rows in %d shard(s), %.1fs", len(members),
             head.uri, dest.uri, rows, shards, rep.duration_s)
    return rep

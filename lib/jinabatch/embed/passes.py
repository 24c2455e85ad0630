"""What the plan-time passes over the whole corpus share: row groups as work items, reading one column of one
row group with each row's corpus position, the Ray Data settings they run under, and positions turned back
into (file, row) for messages.

Every pass over all rows — duplicate ids (``embed.dedup``), late chunking's documents (``embed.documents``),
the carried-column check (``load.precheck``) — runs in this process up to ``LOCAL_MAX_ROWS`` rows and on
Ray Data above, where the row groups are read as tasks on the cluster and only small results come back.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..config import StorageSettings
from ..storage import Storage
from .corpus import CorpusFile

__all__ = ["LOCAL_MAX_ROWS", "SHUFFLE_BATCH_BYTES", "row_groups", "open_file", "read_positions", "ray_data",
           "num_partitions", "locate"]

LOCAL_MAX_ROWS = 1_000_000  # above this a pass runs on Ray Data
SHUFFLE_BATCH_BYTES = 64 * 2**20  # input per shuffle map batch (Ray's default 1 GiB made one worker hold 12 GB)


def row_groups(files: Sequence[CorpusFile]) -> Iterator[dict[str, Any]]:
    """One work item per row group, in corpus order: ``{"uri", "rg", "pos0"}`` (pos0: its first row's position)."""
    for f in files:
        pos = f.offset
        for rg, n in enumerate(f.row_groups):
            yield {"uri": f.uri, "rg": rg, "pos0": pos}
            pos += n


def open_file(uri: str, settings: StorageSettings | None) -> pq.ParquetFile:
    """A corpus file by its uri (local path or scheme://...), through ``jinabatch.storage``."""
    parent, _, name = uri.rpartition("/")
    return pq.ParquetFile(Storage.open(parent or "/", settings).open_input_file(name))


def read_positions(uri: str, rg: int, pos0: int, column: str, settings: StorageSettings | None,
                   name: str = "id") -> pa.Table:
    """Row group ``rg`` of ``uri``: its ``column`` (named ``name``) and each row's corpus position ``pos``."""
    col = open_file(uri, settings).read_row_group(rg, columns=[column]).column(column)
    return pa.table({name: col, "pos": pa.array(np.arange(pos0, pos0 + len(col), dtype=np.int64))})


@contextlib.contextmanager
def ray_data() -> Iterator[None]:
    """Ray Data as the passes use it: no progress bars, and 64 MiB shuffle input batches — Ray's default shuffle
    (v2, hash-partitioned) buffers 1 GiB of input per map batch, which grew one worker to 5-12 GB on 20-50M
    ids. Restores the settings after."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    saved = (ctx.enable_progress_bars, ctx.shuffle_input_batch_bytes)
    ctx.enable_progress_bars, ctx.shuffle_input_batch_bytes = False, SHUFFLE_BATCH_BYTES
    try:
        yield
    finally:
        ctx.enable_progress_bars, ctx.shuffle_input_batch_bytes = saved


def num_partitions(rows: int) -> int:
    """Reducers of a groupby over ``rows`` rows: ~2M rows each, 4 to 1024."""
    return int(min(1024, max(4, rows // 2_000_000)))


def locate(files: Sequence[CorpusFile], positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Corpus positions → (index of the file in ``files``, row within that file)."""
    offsets = np.array([f.offset for f in files], dtype=np.int64)
    positions = np.asarray(positions, dtype=np.int64)
    which = np.searchsorted(offsets, positions, side="right") - 1
    return which, positions - offsets[which] if len(positions) else positions

"""Chains of refreshes: a full output, then deltas each holding only what changed since the one before.

A finished output says what it is in ``_chain.json`` (``observe.records.ChainRecord``): ``kind`` full or delta,
its ``id``, the ``state`` it stands for, the output it is a delta of (``of_output``) (uri, id and state) and every
``members`` of its chain, base first. A delta's folder holds::

    shards/shard-NNNNN.parquet   only its new and changed rows (same columns as a full output's); a shard of the
                                 plan with no such row has no file
    _delta/deleted.parquet       id: the ids deleted since the output it is a delta of
    _delta/prior.parquet         id, code, deleted: where each changed or deleted id's previous row is in the chain
                                 (a rollback of an in-place load restores it from there)

**Reading a chain** (``resolve`` / the reuse join of ``embed.incremental``) reads only the ``id`` and
``text_hash`` columns of every member's shards and the deleted ids, and resolves *latest wins per id* with
plain Min/Max aggregates — the same group-by as the duplicate pass, in process below ``LOCAL_MAX_ROWS`` and on
Ray Data above. Each entry of member ``k`` (base = 1, newest = highest) carries codes whose high bits are ``k``::

    pl = k << 56 | shard << 32 | row       (row = 2**32 - 1, shard = 2**24 - 1: the id was deleted there)
    pa = k << 32 | high 32 bits of text_hash,   pb = k << 32 | low 32 bits

An id appears at most once per member, so the Max of each code is the newest member's entry, and the three
Maxes agree. The cost is one pass over base + deltas rows of two int64 columns: thirty nightly deltas of 1%
each add 30% to the rows read; ``jinabatch compact`` folds a chain into one full output (advised when the
chain is longer than ``COMPACT_AFTER_MEMBERS`` or its deltas hold more than ``COMPACT_AFTER_SHARE`` of the
base's rows; the embed report says so).
"""
from __future__ import annotations

import hashlib
import logging
import uuid
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..config import StorageSettings
from ..errors import ConfigError
from ..observe.records import CHAIN, ChainRecord, OutputRef
from ..observe.report import EmbedReport
from ..storage import Storage

__all__ = ["CHAIN", "DELETED", "PRIOR", "read_chain", "chain_members", "new_id", "member_items", "decode",
           "write_table", "bytes_under", "compaction_advice", "MAX_MEMBERS", "LOC_MASK", "DEL_LOC", "M32",
           "COMPACT_AFTER_MEMBERS", "COMPACT_AFTER_SHARE"]

log = logging.getLogger("jinabatch.embed")

DELETED, PRIOR = "_delta/deleted.parquet", "_delta/prior.parquet"
MAX_MEMBERS = 120  # member numbers fit in the 7 high bits of a code
LOC_MASK = (1 << 56) - 1
DEL_LOC = LOC_MASK  # the location code of a deletion
M32 = (1 << 32) - 1
COMPACT_AFTER_MEMBERS = 31  # a base and a month of nightly deltas
COMPACT_AFTER_SHARE = 0.5  # deltas' rows over the base's


def new_id() -> str:
    """A fresh output id."""
    return uuid.uuid4().hex[:16]


def _legacy(out: Storage, rep: EmbedReport) -> ChainRecord:
    """The record of an output written before chains existed: a full output, its id derived from what it holds."""
    oid = "legacy-" + hashlib.sha256(f"{out.uri}|{rep.fingerprint}|{rep.rows_embedded}".encode()).hexdigest()[:16]
    return ChainRecord(kind="full", id=oid, state=oid, members=[OutputRef(uri=out.uri, id=oid)],
                       embedding=rep.embedding, rows=rep.rows_embedded, rows_written=rep.rows_embedded)


def read_chain(out: Storage) -> ChainRecord | None:
    """What ``out`` is in its chain (None when it holds no finished run)."""
    data = out.read_json(CHAIN)
    if data is not None:
        return ChainRecord.model_validate(data)
    rep = EmbedReport.read(out)
    return _legacy(out, rep) if rep is not None and rep.finished else None


def chain_members(head: Storage, settings: StorageSettings) -> list[tuple[Storage, ChainRecord]]:
    """The members of ``head``'s chain, base first, each checked to be the output the chain was made from."""
    rec = read_chain(head)
    if rec is None:
        raise ConfigError(f"{head.uri}: no finished embed run there (no _chain.json or _report.json)")
    found = []
    for ref in rec.members[:-1]:
        st = Storage.open(ref.uri, settings)
        got = read_chain(st)
        if got is None or got.id != ref.id:
            raise ConfigError(f"{head.uri} is a delta of a chain whose member {ref.uri} is "
                              f"{'gone' if got is None else 'another output now (id ' + got.id + ')'}, not the "
                              f"output {ref.id} it was made from; embed without output.previous (a full output) or "
                              "restore that member")
        found.append((st, got))
    return found + [(head, rec)]


def member_items(members: list[tuple[Storage, ChainRecord]]) -> list[dict[str, Any]]:
    """The join's items for a chain: every member's shard files and deleted-id file, with its number (base = 1)."""
    if len(members) > MAX_MEMBERS:
        raise ConfigError(f"{members[-1][0].uri}: a chain of {len(members)} outputs is longer than {MAX_MEMBERS}; "
                          "fold it into one output first (jinabatch compact CONFIG)")
    items = []
    for k, (st, rec) in enumerate(members, start=1):
        for f in st.list("shards", recursive=False, pattern="shard-*.parquet"):
            index = int(f.path.rsplit("shard-", 1)[1].split(".")[0])
            items.append({"side": 1, "uri": st.uri_of(f.path), "rg": -1, "pos0": 0, "shard": index, "member": k})
        if rec.kind == "delta" and st.stat(DELETED) is not None:
            items.append({"side": 2, "uri": st.uri_of(DELETED), "rg": -1, "pos0": 0, "shard": -1, "member": k})
    return items


def member_codes(k: int, shard: int, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pa, pb, pl) of the rows of shard ``shard`` of member ``k`` (shard -1: deleted ids)."""
    n = len(hashes)
    top = np.int64(k) << 32
    if shard < 0:
        pa_ = np.full(n, top, np.int64)
        return pa_, pa_.copy(), np.full(n, (np.int64(k) << 56) | DEL_LOC, np.int64)
    h = hashes.astype(np.int64).view(np.uint64)
    pa_ = top | (h >> np.uint64(32)).astype(np.int64)
    pb_ = top | (h & np.uint64(M32)).astype(np.int64)
    pl = (np.int64(k) << 56) | (np.int64(shard) << 32) | np.arange(n, dtype=np.int64)
    return pa_, pb_, pl


def decode(pa_: np.ndarray, pb_: np.ndarray, pl: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(present: the newest entry is a row, not a deletion; its text hash; its member number) per id; an id no
    member holds has pl < 0."""
    present = (pl >= 0) & ((pl & LOC_MASK) != DEL_LOC)
    hi = (pa_.astype(np.uint64) & np.uint64(M32)) << np.uint64(32)
    hp = (hi | (pb_.astype(np.uint64) & np.uint64(M32))).view(np.int64)
    return present, hp, np.where(pl >= 0, pl >> 56, 0)


def locate(code: int) -> tuple[int, int, int]:
    """(member number, shard, row) of a location code."""
    return code >> 56, (code >> 32) & ((1 << 24) - 1), code & M32


def write_table(out: Storage, sub: str, table: pa.Table, row_group_size: int = 65536) -> None:
    """Write ``table`` to ``sub`` under ``out`` in one step."""
    tmp = out.local_temp(sub)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, tmp, row_group_size=max(1, row_group_size))
    out.upload(tmp, sub)


def bytes_under(out: Storage, *subs: str) -> int:
    """Bytes of the files under each of ``subs`` (folders or files) of ``out``."""
    total = 0
    for sub in subs:
        st = out.stat(sub)
        if st is not None and not out.is_dir(sub):
            total += st.size
        else:
            total += sum(f.size for f in out.list(sub))
    return total


def compaction_advice(members: list[ChainRecord]) -> str:
    """Why the chain should be folded into one output now ("" when it need not be)."""
    if len(members) > COMPACT_AFTER_MEMBERS:
        return f"the chain has {len(members)} outputs (more than {COMPACT_AFTER_MEMBERS})"
    base = max(1, members[0].rows_written)
    share = sum(m.rows_written for m in members[1:]) / base
    if share > COMPACT_AFTER_SHARE:
        return f"its deltas hold {share:.0%} of the base's rows (more than {COMPACT_AFTER_SHARE:.0%})"
    return ""


def deleted_ids(st: Storage) -> pa.Array:
    """The ids a delta deleted."""
    return pq.read_table(st.open_input_file(DELETED), columns=["id"]).column("id").combine_chunks()


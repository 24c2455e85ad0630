"""Verification of a filled collection before the alias moves onto it: the row count, and sampled ids read
back with the exact vectors and carried values their shards hold (read from wherever the output is).

**The sample covers the whole output.** A fixed number of rows (``SAMPLE_SIZE``, 200) is drawn with a seed:
one in every row group when there are at most that many (the rest anywhere), else one in each of 200 row
groups spread evenly over all of them — so a bad row group late in a file is seen, where the first version
read only each shard's first row group. The cost does not grow with the corpus: at most 200 row groups are
read (only the rows' columns, in parallel threads), and the ids are fetched in a few ``get`` calls. The seed
is drawn per load and returned (the load report keeps it), so a failed check can be replayed with
``verify(..., seed=...)``.
"""
from __future__ import annotations

import random
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..errors import LoadError
from .schema import VECTOR_FIELD, LoadInput, ShardFile

__all__ = ["verify", "verify_sample", "compare_rows", "absent", "count_rows", "sample_rows", "Verified", "SAMPLE_SIZE"]

SAMPLE_SIZE = 200  # ids fetched back and compared vector by vector
GET_BATCH = 100  # ids per get call
READ_THREADS = 8


@dataclass(frozen=True)
class Verified:
    ids: int  # ids compared
    seed: int  # the sample's seed (in the load report)
    row_groups: int  # row groups the sample was read from


def sample_rows(shards: list[ShardFile], sample: int, seed: int) -> list[tuple[int, int, int]]:
    """(shard index, row group, row in it) of ``min(sample, rows)`` distinct rows drawn with ``seed``.

    Up to ``sample`` row groups in all: one row in each, the rest drawn from all rows. More row groups than
    that: one row in each of ``sample`` row groups, one per equal stride of the row groups in output order."""
    groups = [(si, rg, n) for si, s in enumerate(shards) for rg, n in enumerate(s.row_groups or (s.rows,)) if n]
    rows = sum(n for _, _, n in groups)
    want = min(sample, rows)
    rng = random.Random(seed)
    if len(groups) >= want:
        bounds = [i * len(groups) // want for i in range(want + 1)]
        chosen = [groups[lo + rng.randrange(hi - lo)] for lo, hi in zip(bounds, bounds[1:])]
        return [(si, rg, rng.randrange(n)) for si, rg, n in chosen]
    picked = [(si, rg, rng.randrange(n)) for si, rg, n in groups]
    ends = np.cumsum([n for _, _, n in groups])
    taken = {int(ends[k] - groups[k][2]) + r for k, (_, _, r) in enumerate(picked)}  # their positions
    more = [p for p in rng.sample(range(rows), want) if p not in taken][:want - len(picked)]
    for g, p in zip(np.searchsorted(ends, more, side="right").tolist(), more):
        picked.append((groups[g][0], groups[g][1], p - int(ends[g] - groups[g][2])))
    return picked


def verify(client, name: str, inp: LoadInput, sample: int = SAMPLE_SIZE, seed: int | None = None) -> Verified:
    """Row count equals the report's rows_embedded, and sampled ids come back with the shard's vectors and
    carried values (a null comes back as None, whether a nullable field or an absent dynamic key).
    ``seed``: the sample's (drawn when None). LoadError naming the id, shard and row group otherwise."""
    got = count_rows(client, name)
    if got != inp.rows:
        raise LoadError(f"{name} holds {got} rows but the embed report says rows_embedded = {inp.rows}; "
                        "the load is incomplete or a shard was imported twice — the alias was not changed")
    return verify_sample(client, name, inp.shards, inp.id_field.name, [c.name for c in inp.columns], sample, seed)


def verify_sample(client, name: str, shards: list[ShardFile], id_name: str, carried: list[str],
                  sample: int = SAMPLE_SIZE, seed: int | None = None) -> Verified:
    """Sampled rows of ``shards`` come back from collection ``name`` with the same vector and carried values."""
    seed = random.SystemRandom().randrange(2**32) if seed is None else seed
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for si, rg, row in sample_rows(shards, sample, seed):
        groups[(si, rg)].append(row)

    def read(key: tuple[int, int]) -> list[tuple[object, np.ndarray, dict, str]]:
        shard = shards[key[0]]
        table = shard.open().read_row_group(key[1], columns=[id_name, VECTOR_FIELD, *carried])
        where = f"{shard.name} row group {key[1]}"
        return [(table.column(id_name)[r].as_py(), np.asarray(table.column(VECTOR_FIELD)[r].as_py(), np.float32),
                 {c: table.column(c)[r].as_py() for c in carried}, where) for r in groups[key]]

    with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
        want = [row for rows in pool.map(read, sorted(groups)) for row in rows]
    for lo in range(0, len(want), GET_BATCH):
        part = want[lo:lo + GET_BATCH]
        found = {r[id_name]: r for r in client.get(name, ids=[w[0] for w in part],
                                                    output_fields=[id_name, VECTOR_FIELD, *carried])}
        for id_, vector, values, where in part:
            _compare(name, id_, vector, values, found.get(id_), where)
    return Verified(len(want), seed, len(groups))


def _compare(name: str, id_, vector: np.ndarray, values: dict, row: dict | None, where: str) -> None:
    if row is None:
        raise LoadError(f"{name}: id {id_!r} from {where} is missing after the load — the alias was not changed")
    back = np.asarray(row[VECTOR_FIELD], dtype=np.float32)
    if not np.array_equal(back, vector):
        diff = float(np.max(np.abs(back - vector))) if back.shape == vector.shape else float("nan")
        raise LoadError(f"{name}: id {id_!r} came back with a different vector than {where} holds (max diff "
                        f"{diff:.3g}) — the alias was not changed")
    for c, w in values.items():
        if row.get(c) != w:
            raise LoadError(f"{name}: id {id_!r} came back with {c} = {row.get(c)!r} but {where} holds {w!r} — "
                            "the alias was not changed")


def compare_rows(client, name: str, table, id_name: str, carried: list[str], where: str,
                 sample: int = SAMPLE_SIZE, seed: int | None = None) -> Verified:
    """Up to ``sample`` rows of ``table`` (rows a collection must hold: id, vector, carried columns), drawn with
    ``seed``, come back from collection ``name`` with the same vector and carried values."""
    seed = random.SystemRandom().randrange(2**32) if seed is None else seed
    picks = sorted(random.Random(seed).sample(range(table.num_rows), min(sample, table.num_rows)))
    part = table.take(picks) if picks else table.slice(0, 0)
    ids = part.column(id_name).to_pylist()
    for lo in range(0, len(ids), GET_BATCH):
        found = {r[id_name]: r for r in client.get(name, ids=ids[lo:lo + GET_BATCH],
                                                    output_fields=[id_name, VECTOR_FIELD, *carried],
                                                    consistency_level="Strong")}
        for i in range(lo, min(lo + GET_BATCH, len(ids))):
            vector = np.asarray(part.column(VECTOR_FIELD)[i].as_py(), np.float32)
            values = {c: part.column(c)[i].as_py() for c in carried}
            _compare(name, ids[i], vector, values, found.get(ids[i]), where)
    return Verified(len(ids), seed, 0)


def absent(client, name: str, ids: list, id_name: str, where: str, sample: int = SAMPLE_SIZE, seed: int = 0) -> int:
    """Up to ``sample`` of ``ids`` are not in collection ``name``; LoadError naming one that is. How many checked."""
    picks = random.Random(seed).sample(ids, min(sample, len(ids)))
    for lo in range(0, len(picks), GET_BATCH):
        got = client.get(name, ids=picks[lo:lo + GET_BATCH], consistency_level="Strong")
        if got:
            raise LoadError(f"{name}: id {got[0].get(id_name, got[0])!r} is still there although {where}")
    return len(picks)


def count_rows(client, name: str) -> int:
    """``count(*)`` of ``name``, strongly consistent (every write acknowledged so far is counted)."""
    return client.query(name, filter="", output_fields=["count(*)"], consistency_level="Strong")[0]["count(*)"]

"""Verification of a filled collection before the alias moves onto it: the row count, and sampled ids read
back with the exact vectors and carried values their shards hold (read from wherever the output is)."""
from __future__ import annotations

import numpy as np

from ..errors import LoadError
from .schema import VECTOR_FIELD, LoadInput

__all__ = ["verify", "SAMPLE_SIZE"]

SAMPLE_SIZE = 200  # ids fetched back and compared vector by vector


def verify(client, name: str, inp: LoadInput, sample: int = SAMPLE_SIZE) -> int:
    """Row count equals the report's rows_embedded, and sampled ids come back with the shard's vectors and
    carried values (a null comes back as None, whether a nullable field or an absent dynamic key)."""
    got = client.query(name, filter="", output_fields=["count(*)"], consistency_level="Strong")[0]["count(*)"]
    if got != inp.rows:
        raise LoadError(f"{name} holds {got} rows but the embed report says rows_embedded = {inp.rows}; "
                        "the load is incomplete or a shard was imported twice — the alias was not changed")
    id_name = inp.id_field.name
    per_shard = max(1, sample // len(inp.shards))
    picks = np.linspace(0, len(inp.shards) - 1, num=min(len(inp.shards), sample)).round().astype(int)
    checked = 0
    for si in sorted(set(picks.tolist())):
        shard = inp.shards[si]
        if not shard.rows:
            continue
        pf = shard.open()
        carried = [c.name for c in inp.columns]
        table = pf.read_row_group(0, columns=[id_name, VECTOR_FIELD, *carried])
        rows = sorted(set(np.linspace(0, table.num_rows - 1, num=min(per_shard, table.num_rows)).round().astype(int)))
        ids = [table.column(id_name)[int(i)].as_py() for i in rows]
        want = {ids[k]: np.asarray(table.column(VECTOR_FIELD)[int(i)].as_py(), dtype=np.float32)
                for k, i in enumerate(rows)}
        values = {ids[k]: {c: table.column(c)[int(i)].as_py() for c in carried} for k, i in enumerate(rows)}
        got = {r[id_name]: r for r in client.get(name, ids=ids, output_fields=[id_name, VECTOR_FIELD, *carried])}
        found = {i: np.asarray(r[VECTOR_FIELD], dtype=np.float32) for i, r in got.items()}
        for i, v in want.items():
            if i not in found:
                raise LoadError(f"{name}: id {i!r} from {shard.name} is missing after the load — the alias "
                                "was not changed")
            if not np.array_equal(found[i], v):
                raise LoadError(f"{name}: id {i!r} came back with a different vector than {shard.name} holds "
                                f"(max diff {float(np.max(np.abs(found[i] - v))):.3g}) — the alias was not changed")
            for c, w in values[i].items():
                if got[i].get(c) != w:
                    raise LoadError(f"{name}: id {i!r} came back with {c} = {got[i].get(c)!r} but {shard.name} "
                                    f"holds {w!r} — the alias was not changed")
        checked += len(want)
    return checked

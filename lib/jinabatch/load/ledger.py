"""What each physical collection of an alias holds: the chain state it was loaded with and the deltas applied to
it in place since (``observe.records.LedgerEntry``), kept in Milvus beside the collections.

Milvus 2.3 keeps collection properties set at creation across a restart but loses later changes, so what
changes with every in-place load cannot be a property. It is one row per physical collection in a small
collection of its own, ``{alias}__jinabatch_ledger`` (a VARCHAR key, the entry as JSON, and the 2-dim vector
field Milvus requires), written with upsert — durable and as consistent as the data it describes. Its name has
no load stamp, so it is never taken for one of the alias's physical collections.

Before an in-place apply or undo starts, the entry records it as ``pending``; only after the result is verified
does the entry move to the new state. A load killed halfway leaves ``pending``, and the rerun finishes that same
apply (upsert and delete by primary key are idempotent) before anything else may touch the collection.
"""
from __future__ import annotations

import json

from pymilvus import DataType, MilvusClient

from ..observe.records import LedgerEntry

__all__ = ["Ledger", "ledger_name", "KEEP_APPLIED"]

KEEP_APPLIED = 100  # in-place deltas remembered per collection (each can be rolled back, newest first)
_KEY_LEN, _RECORD_LEN = 512, 65535


def ledger_name(alias: str) -> str:
    return f"{alias}__jinabatch_ledger"


class Ledger:
    """The ledger of ``alias`` on ``client`` (created on first write)."""

    def __init__(self, client: MilvusClient, alias: str):
        self.client, self.name = client, ledger_name(alias)
        self._loaded = False

    def _ensure(self) -> None:
        if self.client.has_collection(self.name):
            return
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False,
                                            description="jinabatch: what each collection of the alias holds")
        schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=_KEY_LEN)
        schema.add_field("record", DataType.VARCHAR, max_length=_RECORD_LEN)
        schema.add_field("v", DataType.FLOAT_VECTOR, dim=2)
        index = self.client.prepare_index_params()
        index.add_index("v", index_type="FLAT", metric_type="L2")
        self.client.create_collection(self.name, schema=schema, index_params=index)

    def get(self, physical: str) -> LedgerEntry | None:
        """The entry of ``physical`` (None: loaded before collections recorded their chain, or not ours)."""
        if not self.client.has_collection(self.name):
            return None
        if not self._loaded:
            self.client.load_collection(self.name)
            self._loaded = True
        rows = self.client.query(self.name, filter=f'key == "{physical}"', output_fields=["record"],
                                 consistency_level="Strong")
        return LedgerEntry.model_validate(json.loads(rows[0]["record"])) if rows else None

    def forget(self, physicals: list[str]) -> None:
        """Delete the entries of collections that were dropped (nothing to do without a ledger)."""
        if physicals and self.client.has_collection(self.name):
            self.client.delete(self.name, ids=list(physicals))

    def put(self, entry: LedgerEntry) -> None:
        """Write ``entry`` (replacing the one of its collection)."""
        self._ensure()
        entry.applied = entry.applied[-KEEP_APPLIED:]
        record = json.dumps(entry.to_json(), sort_keys=True)
        # no flush: an acknowledged upsert is in Milvus's log (durable) and a Strong read sees it; a flush would
        # seal a segment per write and cost seconds
        self.client.upsert(self.name, [{"key": entry.physical, "record": record, "v": [0.0, 0.0]}])

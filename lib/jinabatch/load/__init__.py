"""The load stage: the embed output → a new verified Milvus collection behind an alias (schema from the
shards, bulk import or upsert, the embedded Milvus server), and search pinned to the collection's model."""
from .._lazy import lazy_exports

_LAZY = {
    "run_load": ".stage", "LoadReport": ".stage", "read_output": ".schema", "build_schema": ".schema",
    "connect": ".milvus", "Target": ".milvus", "EmbeddedServer": ".server", "search": ".search",
    "search_target": ".search", "format_hits": ".search", "check_load_target": ".precheck",
    "probe_server": ".target",
}
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
__all__ = list(_LAZY)

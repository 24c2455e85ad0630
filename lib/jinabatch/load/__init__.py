"""The load stage: the embed output → a new verified Milvus collection behind an alias (schema from the
shards, bulk import or upsert, the embedded Milvus server), search pinned to the collection's model, and the
comparison of two collections' answers around a model switch."""
from .._lazy import lazy_exports

_LAZY = {
    "run_load": ".stage", "LoadReport": ".stage", "read_output": ".schema", "build_schema": ".schema",
    "connect": ".milvus", "Target": ".milvus", "EmbeddedServer": ".server", "search": ".search",
    "search_target": ".search", "format_hits": ".search", "check_load_target": ".precheck",
    "probe_server": ".target", "compare": ".compare", "compare_target": ".compare", "CompareReport": ".compare",
    "Comparison": ".compare", "format_comparison": ".compare",
}
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
__all__ = list(_LAZY)

"""Watching a run: what the driver writes while it goes and what people and tools read back.

The run log (``runlog``: the ``_manifest.json`` snapshot, ``_progress/`` and ``_timeseries/`` kept as chunk logs
by ``chunklog``), the typed records they hold (``records``), the embed and load reports (``report``), the
driver's progress output (``progress``), the status of a run from its output alone (``status``) and the
self-contained ``_report.html`` of the embed and the load (``report_html``). Nothing here starts Ray or talks to
the API or Milvus: it reads and writes the output folder or ``s3://`` prefix through ``jinabatch.storage``."""
from .._lazy import lazy_exports

_LAZY = {
    "RunLog": ".runlog", "ChunkLog": ".chunklog", "EmbedReport": ".report", "make_progress": ".progress",
    "read_status": ".status", "format_status": ".status", "write_report_html": ".report_html",
}
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
__all__ = list(_LAZY)

"""The embed stage: corpus → plan of shards → a Ray task per shard (worker) under the coordinator's grants
from the key's budget → one Parquet file per shard, dead letters, manifest and report (driver)."""
from .._lazy import lazy_exports

_LAZY = {
    "run_embed": ".driver", "request_token_budget": ".task", "Coordinator": ".coordinator",
    "KeyBudget": ".grants", "GrantedLimiter": ".grants",
    "Plan": ".plan", "Shard": ".plan", "Piece": ".plan", "plan_corpus": ".plan", "list_corpus": ".corpus",
    "CorpusFile": ".corpus",
    "process_shard": ".worker", "ShardResult": ".worker", "EmbedReport": ".report", "ShardWriter": ".shards",
    "RunLog": ".runlog", "make_progress": ".progress", "read_status": ".status", "format_status": ".status",
    "write_report_html": ".report_html",
}
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
__all__ = list(_LAZY)

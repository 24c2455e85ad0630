"""The embed stage: corpus → plan of shards → a Ray task per shard (worker) under the coordinator's grants
from the keys' budget → one Parquet file per shard and its dead letters; the driver books the run through
``jinabatch.observe``."""
from .._lazy import lazy_exports

_LAZY = {
    "run_embed": ".driver", "request_token_budget": ".task", "Coordinator": ".coordinator",
    "KeyBudget": ".grants", "GrantedLimiter": ".grants",
    "Plan": ".plan", "Shard": ".plan", "Piece": ".plan", "plan_corpus": ".plan", "list_corpus": ".corpus",
    "CorpusFile": ".corpus",
    "process_shard": ".worker", "ShardResult": ".result", "ShardWriter": ".shards", "triage": ".triage",
}
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
__all__ = list(_LAZY)

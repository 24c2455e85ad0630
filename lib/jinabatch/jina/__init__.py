"""The Jina embeddings API side: the async client, its wire format and token estimate, the per-worker
limiter, the model table, and ``JinaEmbeddingFunction`` (pymilvus.model's contract on top of the client)."""
from .._lazy import lazy_exports

_LAZY = {
    "JinaClient": ".client", "BatchResult": ".client", "ClientStats": ".client", "Limiter": ".client",
    "NoLimiter": ".client", "Secret": ".client", "resolve_api_key": ".client",
    "JinaEmbeddingFunction": ".facade", "Share": ".limits", "share_of": ".limits", "WorkerLimiter": ".limits",
    "TokenEstimator": ".tokens", "plan_batches": ".tokens", "MODELS": ".models", "ModelSpec": ".models",
    "get_model": ".models",
}
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
__all__ = list(_LAZY)

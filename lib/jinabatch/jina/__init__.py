"""The Jina embeddings API side: the async client, its wire format and token estimate, the limiters (the
``WorkerLimiter`` at given limits, the self-pacing ``AdaptiveLimiter``), keys and key pools, the endpoint check, and
``JinaEmbeddingFunction`` (pymilvus.model's contract on top of the client)."""
from .._lazy import lazy_exports

_LAZY = {
    "JinaClient": ".client", "BatchResult": ".client", "ClientStats": ".client", "Limiter": ".limits",
    "NoLimiter": ".limits", "Secret": ".keys", "KeyPool": ".keys", "resolve_api_key": ".keys",
    "resolve_keys": ".keys", "AdaptiveLimiter": ".pacing", "check_endpoint": ".probe",
    "JinaEmbeddingFunction": ".facade", "Share": ".limits", "share_of": ".limits", "WorkerLimiter": ".limits",
    "Slowdown": ".limits", "TokenEstimator": ".tokens", "plan_batches": ".tokens",
}
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
__all__ = list(_LAZY)

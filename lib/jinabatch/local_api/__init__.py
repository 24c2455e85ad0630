"""The local stand-in for the Jina API — not part of the job that runs in production.

A Jina-compatible HTTP server (``server``, ``app``, ``validate``, ``limits``, and Jina's Batch Embeddings API in
``batch``) serving the models of its
``catalog`` (the job's table, and extra models the table does not know) with a deterministic model
(``fakemodel``), and the readable sample corpus (``samples``) that ``make run`` embeds. It ships because
``make run``, the tests and the benchmarks use it; the job reaches it only through ``jina.base_url = "local"``
(``jinabatch.runtime.jina_endpoint``)."""
from .._lazy import lazy_exports

_LAZY = {"LocalServer": ".server", "ServerSettings": ".server", "embed": ".fakemodel", "write_corpus": ".samples"}
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
__all__ = list(_LAZY)

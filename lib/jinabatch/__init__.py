"""jinabatch: batch embeddings with the Jina API over a Parquet corpus, into Milvus.

The public face. Subpackages follow the data flow (docs/architecture.md):

* ``jinabatch.jina``      — the Jina API side: client, wire format, token estimate, limiter, model table,
                            the pymilvus-compatible ``JinaEmbeddingFunction``
* ``jinabatch.embed``     — the embed stage: corpus plan, shard worker, shard files, coordinator, driver
* ``jinabatch.observe``   — watching a run: run log, typed records, reports, progress, status, _report.html
* ``jinabatch.load``      — the load stage: schema from shards, collections and aliases, import/upsert,
                            the embedded Milvus server, search
* ``jinabatch.local_api`` — the local stand-in for the Jina API (server + deterministic model + sample
                            corpus) for ``make run`` and the tests; the job reaches it only through
                            ``jina.base_url = "local"``
* ``config``, ``errors``, ``runtime`` (services a job starts) stay at the top.

Names are imported on first use, so ``import jinabatch`` loads neither Ray nor Milvus.
"""
from ._lazy import lazy_exports
from .config import Config, load_config
from .errors import *  # noqa: F401,F403
from .errors import __all__ as _errors_all

_LAZY = {
    "JinaClient": ".jina.client", "Secret": ".jina.client", "JinaEmbeddingFunction": ".jina.facade",
    "MODELS": ".models", "ModelSpec": ".models", "get_model": ".models", "spec_of": ".models",
    "plan_corpus": ".embed.plan", "run_embed": ".embed.driver", "EmbedReport": ".observe.report",
    "run_load": ".load.stage", "LoadReport": ".load.stage", "search": ".load.search",
    "compare": ".load.compare",
}
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
__all__ = ["Config", "load_config", *_LAZY, *_errors_all]

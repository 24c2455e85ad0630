"""Search the alias: embed the query with the collection's own model, return the top-k rows.

The collection is pinned to its model: the load stage wrote ``jinabatch.model``, ``.dimensions``,
``.metric``, ``.id_column`` and ``.columns`` as collection properties, so the query is embedded with
exactly the model and dimension its vectors came from (task ``retrieval.query`` for models that take
a task — the asymmetric counterpart of the ``retrieval.passage`` vectors), whatever the config's
``[jina]`` section says today. With ``jina.base_url = "local"`` the bundled Jina-compatible server is
started for the query and stopped after.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..config import Config, JinaSettings
from ..errors import ConfigError, LoadError
from ..jina.models import get_model
from ..runtime import jina_endpoint
from .milvus import PROP, Target, alias_target, connect
from .schema import VECTOR_FIELD

__all__ = ["Hit", "search", "search_target", "format_hits"]


@dataclass(frozen=True)
class Hit:
    id: Any
    score: float
    fields: dict[str, Any] = field(default_factory=dict)


def embed_query(jina: JinaSettings, model: str, dims: int, text: str):
    """The query vector, from ``model`` at ``dims`` with task retrieval.query (when the model takes tasks)."""
    from ..jina.facade import JinaEmbeddingFunction

    spec = get_model(model)
    with jina_endpoint(jina) as (base_url, key):
        with JinaEmbeddingFunction(model, key, "retrieval.query" if spec.takes_task else None,
                                   dims if spec.takes_dimensions else None, base_url=base_url,
                                   settings=jina.model_copy(update={"model": model, "task": None,
                                                                    "dimensions": None, "late_chunking": False})
                                   ) as ef:
            return ef.encode_queries([text])[0] if spec.takes_task else ef([text])[0]


def search_target(target: Target, config: Config, text: str, k: int = 5) -> list[Hit]:
    client, alias = target.client, config.milvus.collection
    name = alias_target(client, alias)
    if name is None:
        raise LoadError(f"no collection {alias!r} (milvus.collection) in Milvus at {target.uri}; "
                        "run the load first: python jobs/load.py CONFIG")
    props = client.describe_collection(name).get("properties") or {}
    model, dims = props.get(PROP + "model"), props.get(PROP + "dimensions")
    if not model or not dims:
        raise LoadError(f"{name} (behind alias {alias!r}) was not loaded by jinabatch: it has no "
                        f"{PROP}model property, so the query's model is unknown")
    id_name = props.get(PROP + "id_column", "id")
    columns = json.loads(props.get(PROP + "columns", "[]"))
    vec = embed_query(config.jina, model, int(dims), text)
    client.load_collection(name)  # no-op when loaded; a rollback may have left it released
    res = client.search(alias, data=[vec.tolist()], limit=k, anns_field=VECTOR_FIELD,
                        search_params={"metric_type": props.get(PROP + "metric", "COSINE")},
                        output_fields=[id_name, *columns])
    return [Hit(h["id"], float(h["distance"]), {c: h["entity"].get(c) for c in columns}) for h in res[0]]


def search(config: Config, text: str, k: int = 5) -> list[Hit]:
    """Top-k hits for ``text`` from the alias ``config.milvus.collection`` (server started if embedded)."""
    if k < 1:
        raise ConfigError(f"-k must be at least 1; got {k}")
    with connect(config.milvus, config.storage) as target:
        return search_target(target, config, text, k)


def format_hits(hits: list[Hit], width: int = 100) -> str:
    """One block per hit: rank, score, id, then each carried column (long text cut to ``width``; a null is
    ``null``, whether a nullable field's or an absent key of the dynamic field)."""
    lines = []
    for rank, h in enumerate(hits, 1):
        lines.append(f"{rank:>2}. score {h.score:.4f}  id {h.id}")
        for c, v in h.fields.items():
            s = "null" if v is None else str(v).replace("\n", " ")
            lines.append(f"      {c}: {s if len(s) <= width else s[: width - 1] + '…'}")
    return "\n".join(lines) if lines else "(no results)"

"""Search the alias: embed the query with the collection's own model, return the top-k rows.

The collection is pinned to its model: the load stage wrote ``jinabatch.model``, ``.task``,
``.dimensions``, ``.embedding`` (the whole embedding key), ``.metric``, ``.id_column`` and ``.columns`` as
collection properties, so the query is embedded with exactly the model and dimension its vectors came from, with
the query side of the task its passages were embedded with (``query_task``: ``retrieval.passage`` →
``retrieval.query``, ``nl2code.passage`` → ``nl2code.query``; a symmetric task as it is), whatever the config's
``[jina]`` section says today. For a model the table does not know, the query request carries the fields the
passages' requests carried (the key's ``fields``), nothing more. With ``jina.base_url = "local"`` the bundled
Jina-compatible server is started for the queries and stopped after.

``pinned(target, name)`` resolves an alias or a physical collection to a ``Pinned`` (its physical name
and the embedding it is pinned to); ``embed_queries`` and ``top_k`` are the two halves of a search, shared
with ``jinabatch.load.compare``.
"""
from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..config import Config, JinaSettings
from ..errors import ConfigError, LoadError
from ..models import spec_of
from ..runtime import jina_endpoint
from .milvus import PROP, Target, alias_target, connect
from .schema import VECTOR_FIELD

__all__ = ["Hit", "Pinned", "search", "search_target", "search_many", "format_hits", "pinned", "query_task",
           "query_settings", "embed_queries", "top_k", "loaded"]

# [jina] settings a query takes from the collection, never from today's config
_EMBEDDING_SETTINGS = {"model", "task", "dimensions", "late_chunking", "embedding_type", "normalized", "on_too_long",
                       "max_inputs_per_request"}


@dataclass(frozen=True)
class Hit:
    """One search result: the row's id, its score and its carried columns."""

    id: Any
    score: float
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Pinned:
    """A collection loaded by jinabatch and the embedding its vectors came from (its ``jinabatch.*`` properties)."""

    name: str  # what was asked for: an alias or a physical collection
    collection: str  # the physical collection
    model: str
    dimensions: int
    task: str | None  # the task queries are embedded with (None: the model takes no task)
    metric: str = "COSINE"
    id_column: str = "id"
    columns: tuple[str, ...] = ()
    rows: int = 0
    previous: str = ""  # the collection the alias pointed at when this one was created
    embedding: dict[str, Any] = field(default_factory=dict, compare=False)  # the embedding key ({} before it was pinned)

    def describe(self) -> str:
        """``jina-embeddings-v3, 256 dims, task retrieval.query``"""
        return f"{self.model}, {self.dimensions} dims" + (f", task {self.task}" if self.task else "")


def query_task(model: str, passage_task: str | None) -> str | None:
    """The task to embed queries with for a collection embedded with ``passage_task`` (None if the model takes
    no task): its query side (``jinabatch.models.ModelSpec.sides``). A collection without a recorded task gets the
    family's query side (``retrieval.query`` for v3, what search always used); one of a model the table does not
    know, none."""
    return spec_of(model).sides(passage_task or None).query


def pinned(target: Target, name: str, *, role: str = "collection") -> Pinned:
    """Resolve an alias or a physical collection to what it is pinned to. LoadError, naming ``name`` and what
    to do, when it does not exist or was not loaded by jinabatch (no ``jinabatch.model`` property).

    ``role`` is how the error messages refer to ``name`` (e.g. "milvus.collection", "--compare")."""
    client = target.client
    physical = alias_target(client, name)
    if physical is None:
        if not client.has_collection(name):
            raise LoadError(f"no collection or alias named {name!r} ({role}) in Milvus at {target.uri}")
        physical = name
    props = client.describe_collection(physical).get("properties") or {}
    model, dims = props.get(PROP + "model"), props.get(PROP + "dimensions")
    if not model or not dims:
        behind = f" (behind alias {name!r})" if physical != name else ""
        raise LoadError(f"{physical}{behind} was not loaded by jinabatch: it has no {PROP}model property, so the "
                        "model to embed queries with is unknown; use a collection loaded by jobs/load.py")
    return Pinned(name, physical, model, int(dims), query_task(model, props.get(PROP + "task")),
                  props.get(PROP + "metric", "COSINE"), props.get(PROP + "id_column", "id"),
                  tuple(json.loads(props.get(PROP + "columns", "[]"))), int(props.get(PROP + "rows", 0) or 0),
                  props.get(PROP + "previous", ""), json.loads(props.get(PROP + "embedding", "{}")))


def query_settings(jina: JinaSettings, pin: Pinned) -> JinaSettings:
    """The settings queries of ``pin``'s collection are embedded with: its model, its width, the query side of its
    task — and, for a model the table does not know, only the request fields its passages were sent with;
    endpoint, keys, timeouts and retries from ``jina``."""
    spec = spec_of(pin.model)
    sent = spec.fields if spec.known else frozenset(pin.embedding.get("fields", ()))
    values = {**jina.model_dump(exclude_unset=True, exclude=_EMBEDDING_SETTINGS), "model": pin.model}
    if pin.task:
        values["task"] = pin.task
    if "dimensions" in sent:
        values["dimensions"] = pin.dimensions
    if not spec.known:  # as the passages' requests were made
        values.update({k: pin.embedding[k] for k in ("embedding_type", "normalized")
                       if k in sent and pin.embedding.get(k) is not None})
    return JinaSettings.model_validate(values)


def embed_queries(jina: JinaSettings, pin: Pinned, texts: Sequence[str], endpoint: tuple | None = None) -> np.ndarray:
    """``(len(texts), pin.dimensions)`` float32: the queries embedded with the collection's model, dimensions and
    query task. ``endpoint``: an open ``(base_url, key)`` from ``jina_endpoint`` to reuse; else one is opened."""
    from ..jina.facade import JinaEmbeddingFunction

    if endpoint is None:
        with jina_endpoint(jina) as ep:
            return embed_queries(jina, pin, texts, ep)
    base_url, key = endpoint
    with JinaEmbeddingFunction(pin.model, key, base_url=base_url, settings=query_settings(jina, pin)) as ef:
        vectors = np.stack(ef(list(texts))) if texts else np.zeros((0, pin.dimensions), np.float32)
    if vectors.shape[1:] != (pin.dimensions,):
        raise LoadError(f"{pin.collection} holds {pin.dimensions}-dim vectors of {pin.model} but the query came back "
                        f"with {vectors.shape[1]} dims")
    return vectors


@contextlib.contextmanager
def loaded(client, name: str, *, restore: bool = False) -> Iterator[None]:
    """Make sure ``name`` is loaded for the block (a rollback or a load leaves older collections released);
    with ``restore`` release it again afterwards if it was not loaded before (no lasting memory cost)."""
    was = "Loaded" in str(client.get_load_state(name).get("state")) if restore else True
    client.load_collection(name)  # no-op when loaded
    try:
        yield
    finally:
        if not was:
            with contextlib.suppress(Exception):
                client.release_collection(name)


def top_k(target: Target, pin: Pinned, vectors: np.ndarray, k: int, *, via: str | None = None) -> list[list[Hit]]:
    """Top-k hits for each query vector from ``pin``'s collection (searched by the name ``via``, e.g. the alias,
    else the physical name), with the carried columns."""
    if not len(vectors):
        return []
    res = target.client.search(via or pin.collection, data=[v.tolist() for v in vectors], limit=k,
                               anns_field=VECTOR_FIELD, search_params={"metric_type": pin.metric},
                               output_fields=[pin.id_column, *pin.columns])
    return [[Hit(h["id"], float(h["distance"]), {c: h["entity"].get(c) for c in pin.columns}) for h in hits]
            for hits in res]


def _check_k(k: int) -> None:
    if k < 1:
        raise ConfigError(f"-k must be at least 1; got {k}")


def search_target(target: Target, config: Config, text: str, k: int = 5) -> list[Hit]:
    """The top ``k`` rows of the alias for ``text`` on an open ``target``."""
    return search_many(target, config, [text], k)[0]


def search_many(target: Target, config: Config, texts: Sequence[str], k: int = 5) -> list[list[Hit]]:
    """Top-k hits for each of ``texts`` from the alias ``config.milvus.collection`` on an open ``target``."""
    _check_k(k)
    alias = config.milvus.collection
    if alias_target(target.client, alias) is None:
        raise LoadError(f"no collection {alias!r} (milvus.collection) in Milvus at {target.uri}; "
                        "run the load first: python jobs/load.py CONFIG")
    pin = pinned(target, alias, role="milvus.collection")
    vectors = embed_queries(config.jina, pin, texts)
    with loaded(target.client, pin.collection):
        return top_k(target, pin, vectors, k, via=alias)  # by the alias: a swap meanwhile is atomic


def search(config: Config, text: str, k: int = 5) -> list[Hit]:
    """Top-k hits for ``text`` from the alias ``config.milvus.collection`` (server started if embedded)."""
    _check_k(k)
    with connect(config.milvus, config.storage) as target:
        return search_target(target, config, text, k)


def format_hits(hits: list[Hit], width: int = 100) -> str:
    """One block per hit: rank, score, id, then each carried column (long text cut to ``width``; a null is
    ``null``, whether a nullable field's or an absent key of the dynamic field). ``text_hash`` is bookkeeping
    for incremental runs, not something to read: ``--json`` has it, this view leaves it out."""
    lines = []
    for rank, h in enumerate(hits, 1):
        lines.append(f"{rank:>2}. score {h.score:.4f}  id {h.id}")
        for c, v in h.fields.items():
            if c == "text_hash":
                continue
            lines.append(f"      {c}: {cut(v, width)}")
    return "\n".join(lines) if lines else "(no results)"


def cut(v: Any, width: int) -> str:
    """A value on one line of at most ``width`` characters (``null`` for None)."""
    s = "null" if v is None else str(v).replace("\n", " ")
    return s if len(s) <= width else s[: width - 1] + "…"

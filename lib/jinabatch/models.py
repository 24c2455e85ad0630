"""What each Jina embedding model accepts: caps, dimensions, tasks, request fields — and what the job assumes of a
model the table does not know.

One table read by the config (to check ``[jina]`` against the model), the client (to pack requests and send only
accepted fields), the search (the query side of a collection's task) and the local stand-in (to validate like the
real API). It sits at the top of the package and imports nothing of it, so every side reads it without a loop.

Figures are the ones Jina publishes (its API reference, model pages and model cards; docs/architecture.md says
which). Where it publishes none the entry holds ``None`` and the job learns the figure instead of guessing it:

* the width (``default_dim``): the vector length of the endpoint check's answer;
* inputs per request (``max_inputs``): requests start at ``CAUTIOUS_INPUTS`` and a 4xx naming the cap cuts them;
* the context (``max_tokens``): the API decides (an input it refuses is isolated by the worker's bisect).

A model the table does not know (``spec_of`` gives ``ModelSpec.unknown``) is run as the API serves it: every figure
unknown, every field possible — the request then carries only the ``[jina]`` fields the user set.

Query and document sides (``ModelSpec.sides``): a ``*.passage`` task is embedded for documents and its ``*.query``
twin for queries (``retrieval.*`` of v3/v4/v5, ``nl2code.*`` / ``qa.*`` ... of the code models, ``code.*`` of v4);
a symmetric task (``text-matching``, ``clustering``, ``classification``) is the same on both sides. Without a
configured task a family embeds documents with its ``document_task``.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field

__all__ = ["ModelSpec", "Sides", "MODELS", "get_model", "spec_of", "close_models", "EMBEDDING_TYPES",
           "REQUEST_FIELDS", "CAUTIOUS_INPUTS", "CAUTIOUS_CONTEXT", "BATCH_FIELDS", "BATCH_MAX_INPUTS"]

EMBEDDING_TYPES = ("float", "base64", "binary", "ubinary")
# optional request fields of POST /v1/embeddings besides model and input (a model may take model-specific ones too)
REQUEST_FIELDS = ("task", "dimensions", "late_chunking", "embedding_type", "normalized", "truncate")
# Where Jina publishes no cap, what the job starts from (its own choice, not a figure of the model's):
CAUTIOUS_INPUTS = 512  # inputs per request: the smallest cap Jina publishes for an embeddings model (v4's)
CAUTIOUS_CONTEXT = 8192  # tokens of one late-chunking request: the smallest context Jina publishes (v3's, v2's)
# Jina's Batch Embeddings API (POST /v1/batch/embeddings): the fields it takes (no embedding_type: JSON floats) and
# the inputs one batch may hold; ``ModelSpec.batch_api`` says which models it serves
BATCH_FIELDS = ("model", "input", "task", "dimensions", "normalized")
BATCH_MAX_INPUTS = 10_000

_QUERY, _PASSAGE = ".query", ".passage"


@dataclass(frozen=True)
class Sides:
    """The task documents are embedded with and the task queries are embedded with (None: no task sent)."""

    document: str | None
    query: str | None


@dataclass(frozen=True)
class ModelSpec:
    """What one model accepts. ``None`` where Jina publishes no figure (the job learns it)."""

    name: str
    family: str  # "v5", "v4", "v3", "clip", "v2", "code"; "" for a model the table does not know
    max_inputs: int | None  # inputs per request; None: not published (start at CAUTIOUS_INPUTS, learn from 4xx)
    max_tokens: int | None  # tokens per input (and per request under late chunking); None: not published
    default_dim: int | None  # width without `dimensions`; None: not published (the endpoint's first answer)
    dims: tuple[int, ...] | None  # accepted `dimensions`: () fixed at default_dim; None: any (the API decides)
    tasks: tuple[str, ...]  # accepted `task` values (() and "task" not in fields: the model takes no task)
    fields: frozenset[str]  # optional request fields it accepts (REQUEST_FIELDS and its own, e.g. return_multivector)
    document_task: str | None = None  # what a corpus is embedded with when jina.task is unset
    batch_api: bool = False  # served by the Batch Embeddings API (BATCH_FIELDS, BATCH_MAX_INPUTS)
    known: bool = True  # False: not in the table, run as the API serves it
    notes: str = field(default="", compare=False)  # what Jina says that the job does not act on

    @classmethod
    def unknown(cls, name: str) -> "ModelSpec":
        """A model the table does not know: every figure unknown, every field possible (what is sent is what the
        user set), any task and dimension (the API decides)."""
        return cls(name, "", None, None, None, None, (), frozenset(REQUEST_FIELDS), known=False)

    @property
    def takes_task(self) -> bool:
        """True if the request may carry ``task``."""
        return "task" in self.fields

    @property
    def takes_dimensions(self) -> bool:
        """True if the request may carry ``dimensions``."""
        return "dimensions" in self.fields

    @property
    def late_chunking(self) -> bool:
        """True if the request may carry ``late_chunking`` (whether the model applies it is the API's business)."""
        return "late_chunking" in self.fields

    def check_dimensions(self, dimensions: int | None) -> int | None:
        """The output width for a requested ``dimensions`` (None if not published and not requested); ValueError
        if the model does not accept it."""
        if dimensions is None:
            return self.default_dim
        if dimensions < 1:
            raise ValueError(f"a width of at least 1; got {dimensions}")
        if self.dims is None:  # Matryoshka levels not published, or a model the table does not know
            return dimensions
        if not self.dims:
            if dimensions != self.default_dim:
                raise ValueError(f"{self.name} has a fixed dimension of {self.default_dim}; got {dimensions}")
            return dimensions
        if dimensions not in self.dims:
            raise ValueError(f"{self.name} accepts dimensions {list(self.dims)}; got {dimensions}")
        return dimensions

    def check_task(self, task: str | None) -> None:
        """ValueError naming the accepted tasks if ``task`` is not one (a model the table does not know takes any)."""
        if task is None or not self.known:
            return
        if not self.takes_task:
            raise ValueError(f"{self.name} takes no task")
        if task not in self.tasks:
            raise ValueError(f"{self.name} accepts {list(self.tasks)}; got {task!r}")

    def sides(self, task: str | None = None) -> Sides:
        """The document and query tasks for a corpus embedded with ``task`` (None: the family's document task).

        ``X.passage`` ↔ ``X.query``; any other task is symmetric. A model that takes no task gets none."""
        if self.known and not self.takes_task:
            return Sides(None, None)
        task = task or self.document_task
        if task is None:
            return Sides(None, None)
        if task.endswith(_PASSAGE):
            return Sides(task, task[: -len(_PASSAGE)] + _QUERY)
        if task.endswith(_QUERY):
            return Sides(task[: -len(_QUERY)] + _PASSAGE, task)
        return Sides(task, task)


_RETRIEVAL = ("retrieval.query", "retrieval.passage")
_V3_TASKS = (*_RETRIEVAL, "separation", "classification", "text-matching")
_V4_TASKS = (*_RETRIEVAL, "text-matching", "code.query", "code.passage")
_V5_TASKS = (*_RETRIEVAL, "text-matching", "classification", "clustering")
_CODE_TASKS = tuple(f"{t}{side}" for t in ("nl2code", "code2code", "code2nl", "code2completion", "qa")
                    for side in (_QUERY, _PASSAGE))
_PLAIN = frozenset({"embedding_type", "normalized", "truncate"})  # v2, clip-v1: no task, fixed width
_MATRYOSHKA = _PLAIN | {"task", "dimensions"}
_V3_DIMS = (32, 64, 128, 256, 512, 768, 1024)
_V4_DIMS = (128, 256, 512, 1024, 2048)
_V5_SMALL_DIMS = (32, 64, 128, 256, 512, 768, 1024)  # Jina's model card; its API reference says "32 … 1024"
_V5_NANO_DIMS = (32, 64, 128, 256, 512, 768)
_V5_NOTE = ("the request schema accepts late_chunking and a model page says v5 does not apply it: the job sends what "
            "jina.late_chunking says and the API decides")
_CODE_NOTE = ("Jina's model pages give the model's width (0.5b: 896, 1.5b: 1536); its API reference does not say "
              "what the API answers without `dimensions`, so the job takes the endpoint's answer")


def _v5(name: str, context: int, dims: tuple[int, ...]) -> ModelSpec:
    return ModelSpec(name, "v5", None, context, dims[-1], dims, _V5_TASKS, _MATRYOSHKA | {"late_chunking"},
                     "retrieval.passage", batch_api=True, notes=_V5_NOTE)


def _code(name: str, dims: tuple[int, ...]) -> ModelSpec:
    return ModelSpec(name, "code", None, 32768, None, dims, _CODE_TASKS,
                     frozenset({"task", "dimensions", "embedding_type", "truncate"}), "nl2code.passage",
                     notes=_CODE_NOTE)


MODELS: dict[str, ModelSpec] = {
    m.name: m
    for m in [
        _v5("jina-embeddings-v5-text-small", 32768, _V5_SMALL_DIMS),
        _v5("jina-embeddings-v5-text-nano", 8192, _V5_NANO_DIMS),  # 8K on its model page (its release post: 32K)
        _code("jina-code-embeddings-0.5b", (64, 128, 256, 512, 896)),
        _code("jina-code-embeddings-1.5b", (128, 256, 512, 1024, 1536)),
        ModelSpec("jina-embeddings-v4", "v4", 512, 32768, 2048, _V4_DIMS, _V4_TASKS,
                  _MATRYOSHKA | {"late_chunking", "return_multivector"}, "retrieval.passage",
                  notes="also takes images and PDFs as inputs, and return_multivector (N×D per input); the job "
                        "sends text and asks for one vector per input"),
        ModelSpec("jina-embeddings-v3", "v3", 2048, 8192, 1024, _V3_DIMS, _V3_TASKS, _MATRYOSHKA | {"late_chunking"},
                  "retrieval.passage"),
        ModelSpec("jina-clip-v2", "clip", 2048, 8192, 1024, _V3_DIMS, ("retrieval.query", "retrieval.passage",
                  "text-matching"), _MATRYOSHKA, "retrieval.passage"),
        ModelSpec("jina-clip-v1", "clip", 2048, 8192, 768, (), (), _PLAIN),
        *[
            ModelSpec(f"jina-embeddings-v2-base-{lang}", "v2", 2048, 8192, 768, (), (), _PLAIN)
            for lang in ("en", "de", "es", "zh", "code")
        ],
    ]
}


def close_models(name: str) -> list[str]:
    """Models of the table whose names are close to ``name`` (a misspelling), best first."""
    return difflib.get_close_matches(name, list(MODELS), n=3, cutoff=0.75)


def get_model(name: str) -> ModelSpec:
    """The table's entry for ``name``; ValueError naming the known models if there is none."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}") from None


def spec_of(name: str) -> ModelSpec:
    """The table's entry for ``name``, or ``ModelSpec.unknown(name)`` for a model the table does not know."""
    return MODELS.get(name) or ModelSpec.unknown(name)

"""Request validation of the local server, mirroring https://api.jina.ai/v1/embeddings.

``parse_request`` turns a decoded JSON body into an ``EmbeddingRequest`` or raises ``HTTPProblem``
with the status and ``detail`` the real API would give: 422 for anything the schema rejects
(unknown field, a field the model does not take, wrong JSON type, unknown model / task /
dimensions / embedding_type) and 400 for content problems (empty input, too many inputs, an input
over the model's token cap without ``truncate``). Each detail names the field or input index and
says what is accepted. The models and their figures are the server's catalog (``local_api.catalog``:
the job's table, and models it does not know when the server is told to serve them).

Truncation under late chunking: all inputs form one sequence, so the model's token cap applies
to the request. With ``truncate: true`` inputs are cut in order, each keeping room for the
special tokens of the ones after it, so the total always fits.

``parse_batch_request`` validates a body of ``POST /v1/batch/embeddings`` (Jina's Batch Embeddings API): only the
fields ``models.BATCH_FIELDS`` (a field of the synchronous API the batch body does not have, such as
``embedding_type`` or ``truncate``, is a 422 naming it; so is ``input_file``, which the stand-in does not serve),
only models the table marks ``batch_api``, ``input`` a list of 1..``max_inputs`` strings. Content problems of one
input (empty, over the model's context) do not refuse the batch: they are that item's failure, in the output.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..models import BATCH_FIELDS, EMBEDDING_TYPES, MODELS, REQUEST_FIELDS
from . import fakemodel
from .catalog import ServedModel, catalog

__all__ = ["HTTPProblem", "EmbeddingRequest", "parse_request", "ALL_FIELDS", "BatchRequest", "parse_batch_request",
           "BATCH_MODELS"]

ALL_FIELDS = ("model", "input", *REQUEST_FIELDS, "return_multivector")
_CATALOG = catalog()
BATCH_MODELS = tuple(name for name, spec in MODELS.items() if spec.batch_api)
_NOT_IN_BATCH = {  # fields a batch body does not have, and what to do instead
    "embedding_type": "the batch API returns JSON floats only; leave it out",
    "truncate": "the batch API has no truncate; shorten over-long inputs before submitting",
    "late_chunking": "the batch API embeds each input on its own; leave it out",
    "input_file": "the local stand-in takes inline input only; send the texts in \"input\"",
}


class HTTPProblem(Exception):
    """An error response: ``status``, the ``detail`` text and any headers (``Retry-After``)."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers


@dataclass
class EmbeddingRequest:
    spec: ServedModel
    texts: list[str]  # after truncation
    tokens: list[int]  # per input, after truncation
    task: str | None
    dimensions: int
    late_chunking: bool
    embedding_type: str
    normalized: bool

    @property
    def total_tokens(self) -> int:
        return sum(self.tokens)


def _bool(body: dict, name: str, default: bool) -> bool:
    v = body.get(name)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise HTTPProblem(422, f"{name}: expected true or false; got {v!r}")
    return v


def _inputs(raw) -> list[str]:
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list):
        raise HTTPProblem(422, "input: expected a string or a list of strings / {\"text\": ...} objects")
    texts = []
    for i, item in enumerate(raw):
        if isinstance(item, dict) and set(item) == {"text"} and isinstance(item["text"], str):
            item = item["text"]
        if not isinstance(item, str):
            raise HTTPProblem(422, f"input[{i}]: expected a string or {{\"text\": \"...\"}}; got {type(item).__name__}")
        texts.append(item)
    return texts


def _model(body: dict, models: dict[str, ServedModel]) -> ServedModel:
    name = body.get("model")
    if name is None:
        raise HTTPProblem(422, "model: field required (e.g. \"jina-embeddings-v3\")")
    if not isinstance(name, str):
        raise HTTPProblem(422, f"model: expected a string; got {type(name).__name__}")
    if name not in models:
        raise HTTPProblem(422, f"model: unknown model {name!r}; known models: {', '.join(sorted(models))}")
    return models[name]


def _truncate_all(spec: ServedModel, texts: list[str], late_chunking: bool,
                  tok: fakemodel.Tokenizer) -> tuple[list[str], list[int]]:
    if not late_chunking:
        out = [t if tok.count(t) <= spec.max_tokens else tok.truncate(t, spec.max_tokens) for t in texts]
        return out, [tok.count(t) for t in out]
    remaining, out, tokens = spec.max_tokens, [], []
    special = tok.count("")
    for i, t in enumerate(texts):
        room = max(remaining - special * (len(texts) - i - 1), special)
        if tok.count(t) > room:
            t = tok.truncate(t, room)
        n = tok.count(t)
        out.append(t)
        tokens.append(n)
        remaining -= n
    return out, tokens


def parse_request(body, tokenizer: fakemodel.Tokenizer = fakemodel.FAKE,
                  models: dict[str, ServedModel] | None = None) -> EmbeddingRequest:
    """Validate a decoded JSON body like the real API; raise HTTPProblem(400|422, detail) if wrong.

    ``tokenizer`` counts (and truncates) the inputs: the server's own rule, not the client's estimate; ``models``:
    the catalog served (default: the job's table)."""
    if not isinstance(body, dict):
        raise HTTPProblem(422, "request body must be a JSON object")
    unknown = sorted(set(body) - set(ALL_FIELDS))
    if unknown:
        raise HTTPProblem(422, f"unknown field(s) {unknown}; accepted fields: {list(ALL_FIELDS)}")
    spec = _model(body, _CATALOG if models is None else models)
    accepted = {"model", "input", *spec.fields}
    refused = sorted(k for k in set(body) - accepted if body[k] is not None)
    if refused:
        raise HTTPProblem(422, f"{spec.name} does not accept field(s) {refused}; send only {sorted(accepted)}")
    if _bool(body, "return_multivector", False):
        raise HTTPProblem(400, "return_multivector: the local stand-in answers one vector per input; leave it out")
    if "input" not in body:
        raise HTTPProblem(422, "input: field required")
    texts = _inputs(body["input"])

    task, dimensions = _task_and_dimensions(body, spec)
    etype = body.get("embedding_type")
    etype = "float" if etype is None else etype
    if etype not in EMBEDDING_TYPES:
        raise HTTPProblem(422, f"embedding_type: expected one of {list(EMBEDDING_TYPES)}; got {etype!r}")
    late = _bool(body, "late_chunking", False)
    normalized = _bool(body, "normalized", True)
    truncate = _bool(body, "truncate", False)

    if not texts:
        raise HTTPProblem(400, "input: the list is empty; send at least one text")
    if len(texts) > spec.max_inputs:
        raise HTTPProblem(400, f"input: {len(texts)} inputs, over {spec.name}'s limit of {spec.max_inputs} "
                               "per request; split the batch")
    for i, t in enumerate(texts):
        if not t:
            raise HTTPProblem(400, f"input[{i}]: empty string; remove it or send some text")
    tokens = [tokenizer.count(t) for t in texts]
    if not truncate:
        for i, n in enumerate(tokens):
            if n > spec.max_tokens:
                raise HTTPProblem(400, f"input[{i}]: {n} tokens, over {spec.name}'s limit of {spec.max_tokens}; "
                                       "shorten it or send \"truncate\": true")
        if late and sum(tokens) > spec.max_tokens:
            raise HTTPProblem(400, f"input: {sum(tokens)} tokens in total, over {spec.name}'s limit of "
                                   f"{spec.max_tokens} for one late-chunking request; send fewer chunks per "
                                   "request or \"truncate\": true")
    elif max(tokens) > spec.max_tokens or (late and sum(tokens) > spec.max_tokens):
        texts, tokens = _truncate_all(spec, texts, late, tokenizer)
    return EmbeddingRequest(spec, texts, tokens, task, dimensions, late, etype, normalized)


@dataclass
class BatchRequest:
    """A validated batch submission: every input as sent (no truncation) and its token count."""

    spec: ServedModel
    texts: list[str]
    tokens: list[int]
    task: str | None
    dimensions: int
    normalized: bool


def _batch_inputs(raw, max_inputs: int) -> list[str]:
    if not isinstance(raw, list):
        raise HTTPProblem(422, "input: expected a list of strings")
    if not raw:
        raise HTTPProblem(400, "input: the list is empty; send at least one text")
    if len(raw) > max_inputs:
        raise HTTPProblem(400, f"input: {len(raw)} inputs, over the batch limit of {max_inputs}; split it into "
                               "several batches")
    for i, item in enumerate(raw):
        if not isinstance(item, str):
            raise HTTPProblem(422, f"input[{i}]: expected a string; got {type(item).__name__}")
    return raw


def _task_and_dimensions(body: dict, spec: ServedModel) -> tuple[str | None, int]:
    """The request's ``task`` (one the model knows, or None) and the width it asks for (checked by the model)."""
    task = body.get("task")
    if task is not None and (not isinstance(task, str) or task not in spec.tasks):
        raise HTTPProblem(422, f"task: {spec.name} accepts {list(spec.tasks)}; got {task!r}")
    dims = body.get("dimensions")
    if dims is not None and (isinstance(dims, bool) or not isinstance(dims, int)):
        raise HTTPProblem(422, f"dimensions: expected an integer; got {dims!r}")
    try:
        return task, spec.check_dimensions(dims)
    except ValueError as e:
        raise HTTPProblem(422, f"dimensions: {e}") from None


def parse_batch_request(body, tokenizer: fakemodel.Tokenizer = fakemodel.FAKE, max_inputs: int = 10_000,
                        models: dict[str, ServedModel] | None = None) -> BatchRequest:
    """Validate a decoded ``POST /v1/batch/embeddings`` body; raise HTTPProblem(400|422, detail) if wrong."""
    if not isinstance(body, dict):
        raise HTTPProblem(422, "request body must be a JSON object")
    for name, why in _NOT_IN_BATCH.items():
        if name in body:
            raise HTTPProblem(422, f"{name}: not a field of the batch embeddings API ({why})")
    unknown = sorted(set(body) - set(BATCH_FIELDS))
    if unknown:
        raise HTTPProblem(422, f"unknown field(s) {unknown}; accepted fields: {list(BATCH_FIELDS)}")
    spec = _model(body, _CATALOG if models is None else models)
    if spec.name not in BATCH_MODELS:
        raise HTTPProblem(422, f"model: {spec.name!r} is not served by the batch embeddings API; batch models: "
                               f"{', '.join(BATCH_MODELS)}")
    if "input" not in body:
        raise HTTPProblem(422, "input: field required")
    texts = _batch_inputs(body["input"], max_inputs)
    task, dimensions = _task_and_dimensions(body, spec)
    normalized = _bool(body, "normalized", True)
    return BatchRequest(spec, texts, [tokenizer.count(t) for t in texts], task, dimensions, normalized)

"""The job's settings: TOML in, validated value classes out.

Every section is a small pydantic model with its defaults here; unknown keys are rejected so a typo
fails loudly. ``load_config`` turns any validation failure into one ``ConfigError`` whose message
names the file and the dotted key (``jina.dimensions``) and says what is accepted.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigError
from .models import (
    BATCH_FIELDS,
    BATCH_MAX_INPUTS,
    CAUTIOUS_CONTEXT,
    CAUTIOUS_INPUTS,
    MODELS,
    ModelSpec,
    close_models,
    spec_of,
)

__all__ = [
    "Config", "CorpusSettings", "JinaSettings", "BatchSettings", "LimitsSettings", "RaySettings", "OutputSettings",
    "MilvusSettings", "IndexSettings", "StorageSettings", "load_config", "parse_config", "key_envs", "DEFAULT_BASE_URL",
    "LOCAL_BASE_URL",
]

DEFAULT_BASE_URL = "https://api.jina.ai/v1"
LOCAL_BASE_URL = "local"  # start the bundled Jina-compatible server for the run

log = logging.getLogger("jinabatch")
_WARNED: set[str] = set()  # models the table does not know, warned about once per process
# [jina] settings that become request fields of the same name, when the model takes them (late_chunking: when true)
_REQUEST_SETTINGS = ("task", "dimensions", "late_chunking", "embedding_type", "normalized")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


RESERVED_COLUMNS = ("embedding", "text_hash")  # written by the embed stage into every shard


class CorpusSettings(_Section):
    """``[corpus]``: where the rows are and which columns to read and carry."""

    path: str = "data/corpus"  # a Parquet file, a folder of them, a glob, or an s3:// prefix
    id_column: str = "id"
    text_column: str = "text"
    columns: list[str] = Field(default_factory=list)  # carried into the output and into Milvus
    rows_per_shard: int = Field(5000, gt=0)
    # late chunking: the column naming each row's document, and the column ordering a document's chunks
    document_column: str | None = None
    chunk_order_column: str | None = None

    @model_validator(mode="after")
    def _columns(self) -> "CorpusSettings":
        seen = set()
        for c in self.columns:
            if c in seen:
                raise ValueError(f"columns: {c!r} is listed twice; list each carried column once")
            seen.add(c)
            if c in RESERVED_COLUMNS or c == self.id_column:
                raise ValueError(f"columns: {c!r} is written by the embed stage itself (or is the id); "
                                 f"rename it in the corpus or leave it out (reserved: {list(RESERVED_COLUMNS)})")
        return self


def key_envs(value: str | Sequence[str]) -> tuple[str, ...]:
    """``jina.api_key_env`` as the names of the pool's variables in order (``key0``, ``key1``...): one name for a
    single key, a list for a pool."""
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, (list, tuple)):
        raise ValueError("name the environment variable holding the key, or a list of them for a key pool")
    return tuple(value)


class BatchSettings(_Section):
    """``[jina.batch]``: how the embed stage uses Jina's Batch Embeddings API (``jina.api = "batch"``).

    Jina publishes neither how many batches a key may have in flight nor how long one takes; it suggests polling
    every 10-30 s, which the poll defaults follow (tests set them small)."""

    inputs_per_batch: int = Field(BATCH_MAX_INPUTS, gt=0, le=BATCH_MAX_INPUTS)  # the API takes up to 10,000
    max_in_flight: int = Field(4, gt=0)  # batches submitted and not finished, per key (the job's own cap)
    poll_initial: float = Field(10.0, gt=0)  # seconds before the first status query of a batch
    poll_max: float = Field(30.0, gt=0)  # the poll interval grows x1.5 per query up to this
    poll_jitter: float = Field(0.2, ge=0, le=1)  # each wait is stretched by up to this share, at random
    timeout: float = Field(86_400.0, gt=0)  # s of waiting on one batch; then the shard fails (a rerun waits again)

    @model_validator(mode="after")
    def _poll_order(self) -> "BatchSettings":
        if self.poll_max < self.poll_initial:
            raise ValueError(f"poll_max: {self.poll_max:g}s is below poll_initial ({self.poll_initial:g}s); "
                             "the interval only grows")
        return self


BATCH_MODELS = tuple(m.name for m in MODELS.values() if m.batch_api)


class JinaSettings(_Section):
    """``[jina]``: the API, the model and its request settings, retries.

    A model of the table (``jinabatch.models``) is checked here: a setting it refuses is an error naming it. A model
    the table does not know runs with a one-line warning; its requests carry only the settings the user wrote
    (``request_fields``), and its width is ``dimensions`` or the endpoint check's answer (``answered``)."""

    base_url: str = DEFAULT_BASE_URL
    # "embeddings": POST /v1/embeddings, answers in seconds; "batch": the Batch Embeddings API ([jina.batch]),
    # for large offline runs with the models it serves (BATCH_MODELS)
    api: Literal["embeddings", "batch"] = "embeddings"
    batch: BatchSettings = Field(default_factory=BatchSettings)
    # the variable holding the key, or a list of variables = a pool of keys, [limits] being each key's budget;
    # held as the tuple of names either way
    api_key_env: Annotated[tuple[str, ...], BeforeValidator(key_envs)] = ("JINAAI_API_KEY",)
    model: str = "jina-embeddings-v3"
    task: str | None = None  # None: the model's document task (retrieval.passage; nl2code.passage for code models)
    dimensions: int | None = None  # None = the model's default width (TOML has no null: omit the key)
    late_chunking: bool = False
    on_too_long: Literal["truncate", "skip", "fail"] = "truncate"
    embedding_type: Literal["float", "base64", "binary", "ubinary"] = "base64"
    normalized: bool = True
    max_inputs_per_request: int | None = Field(None, gt=0)  # default: the model's cap
    max_tokens_per_request: int = Field(60_000, gt=0)
    connect_timeout: float = Field(10.0, gt=0)
    read_timeout: float = Field(120.0, gt=0)
    max_attempts: int = Field(8, ge=1)
    retry_timeout: float = Field(600.0, gt=0)  # seconds across all attempts of one request
    retry_wait_initial: float = Field(0.5, ge=0)  # first backoff (s); doubles per attempt, plus jitter
    retry_wait_max: float = Field(30.0, ge=0)  # cap of one backoff (s)
    retry_wait_jitter: float = Field(1.0, ge=0)  # up to this many random seconds added to a backoff
    retry_after_max: float = Field(120.0, ge=0)  # cap on a server's Retry-After (s)
    concurrency: int = Field(4, gt=0)  # requests in flight per client in JinaClient.embed
    price_per_million_tokens: float | None = Field(None, ge=0)  # for cost estimates and spend in reports (USD)
    # the width the endpoint answered with, for a model whose width is neither configured nor published
    _answered_dim: int | None = PrivateAttr(None)

    @field_validator("api_key_env")
    @classmethod
    def _key_envs(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        if not names or not all(n.strip() for n in names):
            raise ValueError("name the environment variable holding the key, or a list of them for a key pool")
        if len(set(names)) != len(names):
            raise ValueError(f"a variable is named twice in {list(names)}: each key of a pool needs its own variable")
        return names

    @model_validator(mode="after")
    def _fits_model(self) -> "JinaSettings":
        spec = self.spec
        if self.dimensions is not None and self.dimensions < 1:
            raise ValueError(f"dimensions: a width of at least 1; got {self.dimensions}")
        if self.api == "batch":
            self._fits_batch()
        if not spec.known:
            _warn_unknown(self.model)
            return self
        for name in self._written() - {"dimensions"}:  # a setting the user wrote that the model refuses (422)
            if name not in spec.fields:
                raise ValueError(f"{name}: {self.model} does not take {name!r} (its request fields: "
                                 f"{sorted(spec.fields)}); remove jina.{name}")
        try:
            spec.check_task(self.task)
        except ValueError as e:
            raise ValueError(f"task: {e}") from None
        if spec.takes_dimensions or self.dimensions is not None:
            try:
                spec.check_dimensions(self.dimensions)
            except ValueError as e:
                raise ValueError(f"dimensions: {e}") from None
        return self

    def _fits_batch(self) -> None:
        """The Batch Embeddings API serves v5 text models only and its body has no embedding_type / late_chunking."""
        if not self.spec.batch_api:
            raise ValueError(f"model: the Batch Embeddings API (jina.api = \"batch\") serves only "
                             f"{' and '.join(BATCH_MODELS)}; {self.model!r} is not one of them — use one of those, "
                             f"or jina.api = \"embeddings\"")
        if "embedding_type" in self.model_fields_set and self.embedding_type != "float":
            raise ValueError(f"embedding_type: the Batch Embeddings API has no embedding_type (its vectors come as "
                             f"JSON floats); remove jina.embedding_type = {self.embedding_type!r} or set \"float\"")
        if self.late_chunking:
            raise ValueError("late_chunking: the Batch Embeddings API has no late_chunking; remove it or use "
                             "jina.api = \"embeddings\"")

    @property
    def spec(self) -> ModelSpec:
        """The model's entry in the model table (``ModelSpec.unknown`` for a model it does not know)."""
        return spec_of(self.model)

    def _written(self) -> set[str]:
        """The request settings the user wrote (late_chunking only when true: false is not asking for anything)."""
        return {n for n in _REQUEST_SETTINGS if n in self.model_fields_set and getattr(self, n) is not None
                and (n != "late_chunking" or self.late_chunking)}

    @property
    def request_fields(self) -> frozenset[str]:
        """The optional request fields this config's requests may carry: those the model takes; for a model the
        table does not know, only the settings the user wrote (``truncate`` when ``on_too_long = "truncate"``)."""
        spec = self.spec
        if self.api == "batch":  # the batch body's optional fields the model takes
            return spec.fields & frozenset(BATCH_FIELDS)
        if spec.known:
            return spec.fields
        chosen = set(self._written())
        if "on_too_long" in self.model_fields_set and self.on_too_long == "truncate":
            chosen.add("truncate")
        return frozenset(chosen)

    @property
    def embed_task(self) -> str | None:
        """The task the corpus is embedded with: ``task``, else the model's document task; None if none is sent."""
        if "task" not in self.request_fields:
            return None
        return self.task or self.spec.document_task

    @property
    def wire_type(self) -> str:
        """The embedding type answers come in: ``embedding_type``, or the API's default (float) when not sent."""
        return self.embedding_type if "embedding_type" in self.request_fields else "float"  # batch: float

    @property
    def dim(self) -> int | None:
        """The width of the vectors: ``dimensions``, the model's published width, or the width the endpoint
        answered with (``answered``); None until then for a width that is neither configured nor published."""
        d = self.spec.check_dimensions(self.dimensions if "dimensions" in self.request_fields else None)
        return d if d is not None else self._answered_dim

    @property
    def max_inputs(self) -> int:
        """Inputs per request to start from: ``max_inputs_per_request`` within the model's cap, or within
        ``CAUTIOUS_INPUTS`` where Jina publishes none (a 4xx naming a smaller cap lowers it, in the client)."""
        cap = self.spec.max_inputs or CAUTIOUS_INPUTS
        return min(cap, self.max_inputs_per_request) if self.max_inputs_per_request else cap

    @property
    def context(self) -> int:
        """Tokens one late-chunking request may hold: the model's context, else ``CAUTIOUS_CONTEXT``."""
        return self.spec.max_tokens or CAUTIOUS_CONTEXT

    @property
    def answered_dim(self) -> int | None:
        """The width the endpoint check answered with, when the config was completed with it (``answered``)."""
        return self._answered_dim

    def answered(self, dim: int) -> "JinaSettings":
        """A copy that knows the width the endpoint answered with (sent nowhere: it only fills ``dim``)."""
        copy = self.model_copy()
        copy._answered_dim = dim
        return copy


def _warn_unknown(model: str) -> None:
    if model in _WARNED:
        return
    _WARNED.add(model)
    near = close_models(model)
    hint = f" (did you mean {' or '.join(map(repr, near))}?)" if near else ""
    log.warning("jina.model %r is not in jinabatch's model table%s: running it as the API serves it — requests carry "
                "only the [jina] settings you wrote, the width is jina.dimensions or the endpoint check's answer, "
                "and requests start at %d inputs, cut smaller if the API names a lower cap", model, hint,
                CAUTIOUS_INPUTS)


class LimitsSettings(_Section):
    """The whole budget of the key (of each key, with a pool), shared by all workers on it."""

    rpm: int = Field(500, gt=0)
    tpm: int = Field(1_000_000, gt=0)
    concurrency: int = Field(5, gt=0)
    # share of the budget to aim at: the job starts with empty buckets, so the server's full bucket is slack it
    # never spends; this only covers a server counting a little differently (docs/architecture.md#decisions)
    target: float = Field(0.995, gt=0, le=1)


class RaySettings(_Section):
    """``[ray]``: where the shard tasks run and how many at once."""

    address: str = ""  # "" starts a local Ray; otherwise a cluster address
    workers: int = Field(2, gt=0)  # shard tasks in flight
    num_cpus_per_task: float = Field(0.25, gt=0)
    max_retries: int = Field(3, ge=0)  # retries of a shard whose worker died


class OutputSettings(_Section):
    """``[output]``: where the shards go, and an earlier output to reuse vectors from."""

    path: str = "out/embeddings"
    # a finished output of an earlier run (local or s3://): rows whose (id, text) are unchanged under the same
    # embedding key carry their vectors over instead of being sent again
    previous: str | None = None
    # with ``previous`` under the same embedding key: "delta" writes only new and changed rows, the ids deleted
    # since ``previous`` and a reference to it (a chain of refreshes, loaded in place); "full" writes every row
    write: Literal["delta", "full"] = "delta"


class IndexSettings(_Section):
    """``[milvus.index]``: the vector index built after a load."""

    type: str = "HNSW"
    metric: Literal["COSINE", "IP", "L2"] = "COSINE"
    params: dict[str, Any] = Field(default_factory=lambda: {"M": 16, "efConstruction": 200})


class MilvusSettings(_Section):
    """``[milvus]``: the server to load into, the alias users query, and how files reach it."""

    uri: str = "embedded"  # "embedded" | "./file.db" (Milvus Lite) | "http://host:19530"
    token_env: str = "MILVUS_TOKEN"
    collection: str = "docs"
    index: IndexSettings = Field(default_factory=IndexSettings)
    mode: Literal["auto", "bulk", "insert"] = "auto"
    keep_previous: int = Field(1, ge=0)
    data_dir: str = "out/milvus"  # base dir of the embedded server (reused across runs)
    port: int = Field(19530, gt=0, lt=65536)  # client port of the embedded server
    insert_batch_mb: float = Field(32.0, gt=0, le=60)
    # Where the Milvus server keeps its data, which decides how it reads the files it imports:
    # bucket None = local storage: absolute paths on its host (the embedded default);
    # bucket "name" = MinIO/S3: object keys inside that bucket, reached with the [storage] endpoint and the AWS_*
    # variables. With uri = "embedded" it also runs the embedded server on that bucket (under root_path).
    bucket: str | None = None
    root_path: str = "files"  # minio.rootPath of the embedded server on a bucket (its data under bucket/root_path)
    # key prefix in `bucket` under which the load copies shards that are not already in it (removed after the load);
    # default "jinabatch-import" when a copy is needed
    import_root: str | None = None

    @field_validator("collection")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v or not (v[0].isalpha() or v[0] == "_") or not all(c.isalnum() or c == "_" for c in v):
            raise ValueError("a Milvus name starts with a letter or _ and holds only letters, digits and _")
        return v

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if "://" in v or "/" in v.strip("/"):
            raise ValueError(f"a bucket name, not a URI or path (the bucket of the Milvus server's storage, e.g. "
                             f"\"milvus-data\"); got {v!r}")
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", v.strip("/")):
            raise ValueError(f"{v!r} is not an S3 bucket name (3-63 lowercase letters, digits, '.' and '-')")
        return v.strip("/")

    @field_validator("import_root", "root_path")
    @classmethod
    def _key_prefix(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if "://" in v:
            raise ValueError(f"an object-key prefix inside milvus.bucket, without bucket or scheme (e.g. "
                             f"\"jinabatch-import\"); got {v!r}")
        if not v.strip("/"):
            raise ValueError("an empty prefix; leave the key out for the default")
        return v.strip("/")

    @model_validator(mode="after")
    def _import_root_needs_bucket(self) -> "MilvusSettings":
        if self.import_root is not None and self.bucket is None:
            raise ValueError("import_root: the prefix for copies in the Milvus server's bucket needs milvus.bucket "
                             "(that bucket's name); for a server on local storage remove milvus.import_root")
        return self


class StorageSettings(_Section):
    """How s3:// URIs are reached. Credentials never go here: they come from AWS_ACCESS_KEY_ID /
    AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN (or an instance role) on every node."""

    endpoint: str | None = None  # an S3-compatible store, e.g. "http://minio:9000" (default: $AWS_ENDPOINT_URL, else AWS)
    region: str | None = None  # default: $AWS_REGION, else us-east-1
    connect_timeout: float = Field(5.0, gt=0)
    request_timeout: float = Field(60.0, gt=0)
    max_attempts: int = Field(4, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _no_secrets(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for k in data:
                if any(s in k.lower() for s in ("secret", "access_key", "password", "token", "credential")):
                    raise ValueError(f"{k}: credentials are never read from the config file; set AWS_ACCESS_KEY_ID "
                                     "and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN) in the environment of every node")
        return data


class Config(_Section):
    """The whole job's settings, a section each (``load_config`` reads them from TOML)."""

    corpus: CorpusSettings = Field(default_factory=CorpusSettings)
    jina: JinaSettings = Field(default_factory=JinaSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    ray: RaySettings = Field(default_factory=RaySettings)
    output: OutputSettings = Field(default_factory=OutputSettings)
    milvus: MilvusSettings = Field(default_factory=MilvusSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    source: str | None = Field(None, exclude=True)  # the file it came from, for messages

    def embedding_key(self) -> dict[str, Any]:
        """What decides a vector's value: model, task, dimensions (the width the vectors have: configured,
        published or answered), late chunking, normalization, wire type, truncation policy — and who computes it:
        the local stand-in's vectors are never the real model's. For a model the table does not know, also the
        request fields that were sent (``fields``), so a search sends the same."""
        j = self.jina
        key = {"model": j.model, "task": j.embed_task, "dimensions": j.dim, "late_chunking": j.late_chunking,
               "normalized": j.normalized if "normalized" in j.request_fields else None,
               "embedding_type": j.wire_type, "truncation": j.on_too_long,
               "served_by": "local stand-in" if j.base_url.rstrip("/") == LOCAL_BASE_URL else "api"}
        if not j.spec.known:
            key["fields"] = sorted(j.request_fields)
        return key

    def answered(self, dim: int) -> "Config":
        """A copy whose ``jina`` knows the width the endpoint answered with (``JinaSettings.answered``)."""
        return self.model_copy(update={"jina": self.jina.answered(dim)})

    def fingerprint(self) -> str:
        """Hash of everything that decides a shard's content (not paths of the output, not limits)."""
        c = self.corpus
        payload = {"embedding": self.embedding_key(), "id": c.id_column, "text": c.text_column,
                   "columns": list(c.columns), "rows_per_shard": c.rows_per_shard,
                   "document": c.document_column, "chunk_order": c.chunk_order_column}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _explain(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        m = re.match(r"^([a-z_]+): (.*)$", msg, re.S)
        if e["type"] == "value_error" and m:  # a model-level check that names its own key
            loc, msg = f"{loc}.{m.group(1)}" if loc else m.group(1), m.group(2)
        if e["type"] == "extra_forbidden":
            msg = "unknown setting (check the spelling; see configs/local.toml for the accepted keys)"
        lines.append(f"{loc}: {msg}" if loc else msg)
    return f"{source}: invalid configuration: " + "; ".join(lines)


def parse_config(data: dict[str, Any], source: str = "<config>") -> Config:
    """Validate ``data`` (parsed TOML) into a ``Config``; ConfigError naming ``source`` and the dotted key."""
    try:
        return Config(**data, source=source)
    except ValidationError as e:
        raise ConfigError(_explain(e, source)) from None


def load_config(path: str | os.PathLike[str], overrides: dict[str, Any] | None = None) -> Config:
    """Read a TOML file; ``overrides`` are merged in section by section (used by tests and --set)."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None
    for section, values in (overrides or {}).items():
        if isinstance(values, dict):
            data.setdefault(section, {}).update(values)
        else:
            data[section] = values
    return parse_config(data, str(p))

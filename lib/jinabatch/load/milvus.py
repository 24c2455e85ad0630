"""Milvus: connection, versioned physical collections behind an alias, and the two ways data gets in.

Users query ``milvus.collection`` — an *alias*. Each load creates a new physical collection named
``{alias}__{model}_{dims}d_{UTC stamp}``, fills and verifies it, marks it with properties
(``jinabatch.alias``, ``.model``, ``.task``, ``.dimensions``, ``.id_column``, ``.rows``, ``.previous``,
...), and only then re-points the alias (``alter_alias``, atomic; ``create_alias`` the first time).
So a failed or interrupted load never changes what queries see, and a rerun never duplicates rows
behind the alias. The properties also pin a collection to its model: search reads them to embed the
query with the same model, task and dimensions.

Data gets in by one of:
- ``bulk_import`` (Milvus servers): the import API over gRPC — ``do_bulk_insert`` per shard file (Milvus
  2.3 takes one Parquet file per task), at most ``MAX_IMPORT_TASKS`` tasks in flight, then polls
  ``get_bulk_insert_state`` until every task is Completed; a failed task raises ``LoadError`` with
  Milvus's own reason and file. These are pymilvus ORM calls, deprecated in 3.0 and removed in 3.1
  (pyproject pins <3.1); they live only in ``_submit`` / ``_state`` so the REST import of Milvus ≥ 2.4
  can replace them in one place.
- ``upsert_shards`` (Milvus Lite, which has no import API, or ``mode = "insert"``): streams the shards
  in batches of ``insert_batch_mb`` (never one RPC over 64 MB). Upsert, so a retried batch cannot
  duplicate. A null in a nullable field is sent as None; a null in a dynamic-field column is left out of
  the row (the key is absent).
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from pymilvus import MilvusClient

from ..config import MilvusSettings, StorageSettings
from ..errors import ConfigError, LoadError
from .importfiles import ImportFile
from .schema import VECTOR_FIELD, ShardFile
from .server import EmbeddedServer, embedded_uri
from .staging import dynamic_values

__all__ = [
    "Target", "connect", "physical_name", "Physical", "physicals", "verified_chain", "alias_target", "point_alias",
    "check_alias_free",
    "bulk_import", "upsert_shards", "upsert_batch", "delete_ids", "error_reason", "MAX_IMPORT_TASKS", "MAX_RPC_MB", "PROP",
]

log = logging.getLogger(__name__)

MAX_IMPORT_TASKS = 64  # import tasks in flight at once (Milvus ≥2.4 caps one job at 1024 files)
MAX_RPC_MB = 60  # stay under Milvus's 64 MB gRPC message cap
POLL_SECONDS = 0.5
PROP = "jinabatch."  # prefix of our collection properties


@dataclass
class Target:
    """A connected Milvus: ``kind`` is "server" (import API available) or "lite" (Milvus Lite)."""

    client: MilvusClient
    uri: str
    kind: str
    token: str | None = None

    def __repr__(self) -> str:  # never show the token
        return f"Target(uri={self.uri!r}, kind={self.kind!r})"


@contextlib.contextmanager
def connect(settings: MilvusSettings, storage: StorageSettings | None = None) -> Iterator[Target]:
    """Connect as ``milvus.uri`` says; for "embedded" the server is started (or reused) for the block — on
    ``milvus.bucket`` through ``storage``'s endpoint when a bucket is set."""
    token = os.environ.get(settings.token_env) or None
    uri = settings.uri
    if uri == "embedded":
        with embedded_uri(EmbeddedServer.from_settings(settings, storage)) as u:
            yield _open(u, "server", token)
        return
    if uri.startswith(("http://", "https://", "tcp://", "grpc://")):
        yield _open(uri, "server", token)
        return
    if uri.endswith(".db"):
        Path(uri).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
        yield _open(str(Path(uri).expanduser().resolve()), "lite", None)
        return
    raise ConfigError(f"milvus.uri = {uri!r}: use \"embedded\", a Milvus Lite file ending in .db, "
                      "or a server address like http://host:19530")


def _open(uri: str, kind: str, token: str | None) -> Target:
    try:
        client = MilvusClient(uri=uri, token=token or "", timeout=30)
    except Exception as e:
        raise LoadError(f"cannot connect to Milvus at {uri}: {error_reason(e)}; check milvus.uri "
                        "(and the token in the milvus.token_env variable if the server needs one)") from None
    return Target(client, uri, kind, token)


def error_reason(e: BaseException) -> str:
    """Milvus's own message without the pymilvus wrapper noise."""
    msg = getattr(e, "message", None) or str(e)
    return re.sub(r"\s+", " ", msg).strip()


def physical_name(alias: str, model: str, dims: int, now: datetime | None = None) -> str:
    """``docs__jina_embeddings_v3_1024d_20261125T183000123`` — sorts by creation time."""
    now = now or datetime.now(timezone.utc)
    slug = re.sub(r"[^0-9A-Za-z_]", "_", model)
    return f"{alias}__{slug}_{dims}d_{now:%Y%m%dT%H%M%S}{now.microsecond // 1000:03d}"


_STAMP = re.compile(r"_(\d{8}T\d{9})$")


@dataclass(frozen=True)
class Physical:
    """One of an alias's physical collections: its name, creation stamp and ``jinabatch.*`` properties."""

    name: str
    stamp: str
    props: dict[str, str]

    @property
    def previous(self) -> str:
        """The collection the alias pointed at when this one was created ("" for the first)."""
        return self.props.get(PROP + "previous", "")


def physicals(client: MilvusClient, alias: str) -> list[Physical]:
    """This alias's physical collections (ours by name prefix and property), oldest first."""
    out = []
    for name in client.list_collections():
        m = _STAMP.search(name)
        if not name.startswith(alias + "__") or not m:
            continue
        props = client.describe_collection(name).get("properties") or {}
        if props.get(PROP + "alias") == alias:
            out.append(Physical(name, m.group(1), {k: str(v) for k, v in props.items()}))
    return sorted(out, key=lambda p: (p.stamp, p.name))


def verified_chain(client: MilvusClient, alias: str, family: list[Physical] | None = None) -> list[str]:
    """The verified collections, newest first: the alias's target, then each one's ``previous``.

    The alias only ever moves onto a verified collection, and every collection records at creation the
    one the alias pointed at then; so following ``previous`` from the target walks exactly the verified
    loads. (Derived, not marked: Milvus 2.3 loses a collection-property change made after creation
    across a restart, while creation-time properties and aliases persist.)
    """
    by_name = {p.name: p for p in (family if family is not None else physicals(client, alias))}
    chain, name = [], alias_target(client, alias)
    while name and name in by_name and name not in chain:
        chain.append(name)
        name = by_name[name].previous
    return chain


def alias_target(client: MilvusClient, alias: str) -> str | None:
    """The collection an alias points at, or None if there is no such alias."""
    if alias not in client.list_aliases().get("aliases", []):  # describe_alias would log an RPC error
        return None
    return client.describe_alias(alias).get("collection_name") or None


def check_alias_free(client: MilvusClient, alias: str) -> None:
    """LoadError if ``alias`` is the name of a real collection (it could then never become an alias)."""
    if alias not in client.list_aliases().get("aliases", []) and client.has_collection(alias):
        raise LoadError(f"a collection named {alias!r} exists and is not an alias; milvus.collection must be "
                        "free for the alias — rename or drop that collection, or choose another name")


def point_alias(client: MilvusClient, alias: str, name: str) -> str | None:
    """Point ``alias`` at ``name`` atomically; returns where it pointed before (None the first time)."""
    before = alias_target(client, alias)
    if before is None:
        check_alias_free(client, alias)
        client.create_alias(name, alias)
    elif before != name:
        client.alter_alias(name, alias)
    return before


# --- bulk import (Milvus servers) -------------------------------------------------------------------

def _submit(target: Target, collection: str, file: str) -> int:
    from pymilvus import connections, utility

    using = f"jinabatch-import-{id(target.client)}"
    with warnings.catch_warnings():  # the ORM calls are deprecated in 3.0; we know (see module docstring)
        warnings.simplefilter("ignore")
        if not connections.has_connection(using):
            connections.connect(alias=using, uri=target.uri, token=target.token or "")
        return utility.do_bulk_insert(collection, files=[file], using=using)


def _state(target: Target, task: int) -> Any:
    from pymilvus import utility

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return utility.get_bulk_insert_state(task, using=f"jinabatch-import-{id(target.client)}")


def bulk_import(target: Target, collection: str, files: Sequence[ImportFile],
                progress: Callable[[int], None] | None = None, timeout: float = 3600.0) -> int:
    """Import every file (``ImportFile.path``: what the server reads); returns the rows Milvus reports imported.
    LoadError on any failed task, naming the shard it came from and what the server was asked to read."""
    from pymilvus import BulkInsertState as S

    pending = list(files)
    running: dict[int, ImportFile] = {}
    rows = 0
    deadline = time.monotonic() + timeout
    while pending or running:
        while pending and len(running) < MAX_IMPORT_TASKS:
            f = pending.pop(0)
            try:
                running[_submit(target, collection, f.path)] = f
            except Exception as e:
                raise LoadError(f"{f.source}: Milvus refused the import of {f.path}: {error_reason(e)}") from None
        time.sleep(POLL_SECONDS)
        for task, f in list(running.items()):
            st = _state(target, task)
            if st.state in (S.ImportFailed, S.ImportFailedAndCleaned):
                reason = st.failed_reason or st.state_name
                hint = ("check that the shard matches the collection (columns, types, dimension)"
                        if "key does not exist" not in reason and "no such file" not in reason.lower() else
                        f"the server cannot read {f.path!r}: a server on MinIO/S3 reads keys in its own bucket "
                        "(set milvus.bucket to it), one on local storage reads paths on its host (leave milvus.bucket "
                        "unset)")
                raise LoadError(f"{f.source}: Milvus import task {task} failed: {reason} — {hint}")
            if st.state == S.ImportCompleted:
                del running[task]
                rows += st.row_count
                done = len(files) - len(pending) - len(running)
                log.info("imported %s: %d rows (%d/%d files)", f.path, st.row_count, done, len(files))
                if progress:
                    progress(st.row_count)
        if time.monotonic() > deadline:
            raise LoadError(f"Milvus import into {collection} did not finish within {timeout:.0f} s "
                            f"({len(running)} task(s) still running); check the server's logs and rerun")
    return rows


# --- batched upsert (Milvus Lite, or mode = "insert") -------------------------------------------------

def upsert_shards(target: Target, collection: str, shards: Sequence[ShardFile], dim: int, batch_mb: float,
                  progress: Callable[[int], None] | None = None, dynamic: Sequence[str] = ()) -> int:
    """Stream shards in upsert batches of about ``batch_mb`` MB; returns rows sent. ``dynamic``: columns that
    are keys of the dynamic field (left out of a row where null)."""
    rows = 0
    for shard in shards:
        pf = shard.open()
        for rb in pf.iter_batches(batch_size=8192):
            rows += upsert_batch(target, collection, rb, dim, batch_mb, progress, dynamic, where=shard.uri)
    return rows


def upsert_batch(target: Target, collection: str, rb, dim: int, batch_mb: float,
                 progress: Callable[[int], None] | None = None, dynamic: Sequence[str] = (), where: str = "") -> int:
    """Upsert one record batch (or table) of shard rows in RPCs of about ``batch_mb`` MB; returns rows sent."""
    limit = min(batch_mb, MAX_RPC_MB) * 1024 * 1024
    per_row = max(1, rb.nbytes // max(1, rb.num_rows))
    step = max(1, int(limit // per_row))
    for start in range(0, rb.num_rows, step):
        part = rb.slice(start, step)
        try:
            target.client.upsert(collection, _rows(part, dim, dynamic))
        except Exception as e:
            raise LoadError(f"{where}: Milvus rejected rows {start}..{start + part.num_rows} of a "
                            f"batch: {error_reason(e)}") from None
        if progress:
            progress(part.num_rows)
    return rb.num_rows


def delete_ids(target: Target, collection: str, ids: Sequence[Any], batch: int = 4096) -> int:
    """Delete ``ids`` (primary keys) from ``collection`` in batches; returns how many were asked for. Deleting an
    id that is not there is no error, so a rerun is harmless."""
    for lo in range(0, len(ids), batch):
        try:
            target.client.delete(collection, ids=list(ids[lo:lo + batch]))
        except Exception as e:
            raise LoadError(f"Milvus refused to delete ids {lo}..{lo + batch} from {collection}: "
                            f"{error_reason(e)}") from None
    return len(ids)


def _rows(rb, dim: int, dynamic: Sequence[str] = ()) -> list[dict[str, Any]]:
    flat = rb.column(VECTOR_FIELD).flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    if flat.size != rb.num_rows * dim:
        raise LoadError(f"vectors do not all have the run's dimension {dim}")
    flat = flat.reshape(-1, dim)
    other = {n: rb.column(n).to_pylist() for n in rb.schema.names if n != VECTOR_FIELD and n not in dynamic}
    extra = dynamic_values(rb, dynamic) if dynamic else [{}] * rb.num_rows
    return [{**{n: v[i] for n, v in other.items()}, **extra[i], VECTOR_FIELD: flat[i]} for i in range(rb.num_rows)]


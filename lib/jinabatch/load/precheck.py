"""Before the first API request: will the configured Milvus hold the carried columns?

``check_load_target(column_types, settings, files=...)`` takes the planned carried column types (what
``jinabatch.embed.plan.plan_corpus`` returns) and ``[milvus]`` and raises, naming the column, file and setting
and saying what to do, for anything the load would otherwise refuse after the tokens are spent:

* a column name Milvus cannot use for a field (``[A-Za-z_][A-Za-z0-9_]*``, ≤ 255 characters), or one taken by
  the vector field ``embedding``, the id column or the dynamic field ``$meta``;
* a type with no Milvus scalar even after the embed stage's conversions (``jinabatch.embed.columns``);
* more fields than a collection holds (64);
* with ``files``: a text value over 65,535 bytes (Milvus's VARCHAR cap), or ±infinity in a float column
  (Milvus stores no non-finite scalar; a NaN is written as null, which loads) — the columns are read once
  (``load.scan``: in process for a small corpus, on Ray Data above ``local_max_rows`` rows);
* a remote server that does not answer, or ``mode = "bulk"`` where it cannot work (Milvus Lite; an output on
  object storage that a server on local storage cannot import from);
* ``milvus.bucket`` unreachable with the job's endpoint and credentials (or missing, for a remote server);
  for the embedded server on a bucket, credentials it cannot use (``AWS_SESSION_TOKEN``: temporary ones).

Nulls are not refused: the returned ``TargetCheck`` says where each column will go on this server
(``jinabatch.load.target``) and ``summary()`` prints it. The server's capabilities are found without
starting anything (``probe_server``).
"""
from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ContextManager

import pyarrow as pa

from ..config import MilvusSettings, StorageSettings
from ..embed.columns import check_carried_type, check_id_type, shard_type
from ..embed.passes import LOCAL_MAX_ROWS
from ..errors import ConfigError, CorpusError
from ..storage import Storage
from .importfiles import COPY, DEFAULT_IMPORT_ROOT, DOWNLOAD, IN_BUCKET, placement
from .scan import scan_columns
from .schema import VECTOR_FIELD
from .staging import DYNAMIC_FIELD
from .target import (
    INSERT,
    MAX_FIELDS,
    Layout,
    ServerInfo,
    choose_layout,
    fill_mode,
    probe_server,
)

__all__ = ["check_load_target", "TargetCheck", "ColumnFacts"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class ColumnFacts:
    name: str
    corpus_type: str
    shard_type: str
    nulls: int | None = None  # None: not scanned
    longest: int = 0  # longest text value in bytes


@dataclass
class TargetCheck:
    server: ServerInfo
    uri: str
    columns: dict[str, ColumnFacts]
    layout: Layout | None  # None when the files were not scanned (nulls unknown)
    fill: str  # "bulk" | "bulk (import copies)" | "insert"
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"load target: {self.server.describe()} at {self.uri}; fill: {self.fill}"]
        for c in self.columns.values():
            shown = c.corpus_type if c.shard_type == c.corpus_type else f"{c.corpus_type} as {c.shard_type}"
            if self.layout is not None:
                where = self.layout.describe(c.name)
            elif self.server.nullable:
                where = "nullable field"
            else:
                where = "field, or a key of the dynamic field if it holds nulls"
            nulls = "" if c.nulls is None else f", {c.nulls} null(s)"
            lines.append(f"  {c.name}: {shown}{nulls} → {where}")
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])


def _check_names(names: Sequence[str], id_column: str) -> None:
    for key, n in [("corpus.id_column", id_column), *[("corpus.columns", c) for c in names]]:
        if n == id_column and key == "corpus.columns":
            raise CorpusError(f"corpus.columns: {n!r} is the id column (corpus.id_column), loaded as the primary key "
                              "already — drop it from corpus.columns")
        if n in (VECTOR_FIELD, DYNAMIC_FIELD):
            what = "vector field" if n == VECTOR_FIELD else "dynamic field"
            raise CorpusError(f"{key}: column {n!r} has the name of the output's {what}; rename the column in the "
                              "corpus files" + (" or drop it from corpus.columns" if key == "corpus.columns" else ""))
        if not _NAME.match(n) or len(n) > 255:
            raise CorpusError(f"{key}: column {n!r} cannot be a Milvus field name (letters, digits and _, not "
                              "starting with a digit, at most 255 characters); rename it in the corpus files"
                              + (" or drop it from corpus.columns" if key == "corpus.columns" else ""))


def check_load_target(column_types: Mapping[str, pa.DataType], settings: MilvusSettings, *,
                      files: Sequence[str | Path] = (), id_column: str = "id", id_type: pa.DataType | None = None,
                      server: ServerInfo | None = None, storage: StorageSettings | None = None,
                      output: str | None = None, local_max_rows: int = LOCAL_MAX_ROWS,
                      ray_context: Callable[[], ContextManager[Any]] = contextlib.nullcontext) -> TargetCheck:
    """Refuse (ConfigError / CorpusError) what the Milvus of ``settings`` could not hold; say how the rest goes.

    ``column_types``: carried column → corpus Arrow type, in ``corpus.columns`` order (``Plan.column_types``).
    ``files``: the planned corpus files (paths, URIs or ``CorpusFile``s); given, their carried columns are read
    once (nulls, text lengths, ±inf), through ``storage`` for object-store URIs.
    ``server``: skip probing the server and its bucket (tests, or a caller that knows).
    ``output``: ``output.path``, to check that bulk import can reach the files from there.
    ``ray_context()``: makes Ray available when the files hold more than ``local_max_rows`` rows: the columns
    are then read on Ray Data (``load.scan``), not in this process.
    """
    names = list(column_types)
    _check_names(names, id_column)
    if settings.uri == "embedded" and settings.bucket:  # credentials it cannot use: refused before anything is read
        from .server import BucketStorage

        BucketStorage(settings.bucket, settings.root_path, storage or StorageSettings()).check_credentials()
    first = str(getattr(files[0], "uri", files[0])) if files else "corpus"
    if id_type is not None:
        check_id_type(first, id_column, id_type)
    facts = {}
    for n, t in column_types.items():
        check_carried_type(first, n, t)
        facts[n] = ColumnFacts(n, str(t), str(shard_type(t)))
    if files:
        scanned = scan_columns(files, list(facts), storage, local_max_rows=local_max_rows, ray_context=ray_context)
        for n, f in facts.items():
            f.nulls, f.longest = scanned[n].nulls, scanned[n].longest
    probing = server is None
    server = server or probe_server(settings)
    layout = choose_layout({n: f.nulls for n, f in facts.items()}, server) if files else None
    n_fields = 2 + (len(layout.typed) + bool(layout.dynamic) if layout else len(names))
    if n_fields > MAX_FIELDS:
        raise ConfigError(f"corpus.columns: {len(names)} carried columns make {n_fields} Milvus fields (with the id "
                          f"and the vector); a collection holds at most {MAX_FIELDS} — carry fewer columns")
    fill, note = fill_mode(settings, server, layout, output)
    if probing and settings.bucket and (settings.uri == "embedded" or fill != INSERT):
        _reach_bucket(settings, storage)
    notes = [note] if note else []
    if output is not None and fill != INSERT:
        notes += [n for n in [_files_note(settings, output)] if n]
    return TargetCheck(server, settings.uri, facts, layout, fill, notes)


def _reach_bucket(ms: MilvusSettings, storage: StorageSettings | None) -> None:
    """milvus.bucket answers with these credentials (StorageError naming it otherwise). The embedded server
    creates a missing bucket itself; a remote server's must exist."""
    if ms.uri == "embedded":
        from .server import BucketStorage

        BucketStorage(ms.bucket, ms.root_path, storage or StorageSettings()).check()
    else:
        Storage.open(f"s3://{ms.bucket}", storage).check("milvus.bucket")


def _files_note(ms: MilvusSettings, output: str) -> str | None:
    """Where the server will read the shards from, when that is not simply where they are on this disk."""
    where = placement(ms, output)
    if where == IN_BUCKET:
        return f"the server imports the shards by key where they are: {output}/shards (in milvus.bucket; no copy)"
    if where == COPY:
        return (f"the shards are copied to s3://{ms.bucket}/{ms.import_root or DEFAULT_IMPORT_ROOT}/<collection>/ "
                f"(milvus.bucket, which {output} is not in) for the import, and removed after it")
    if where == DOWNLOAD:
        return (f"the shards are copied from {output} to {ms.data_dir}/_import/<collection>/ for the embedded server "
                "(on local storage), and removed after the import")
    return None

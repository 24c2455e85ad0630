"""The corpus as the planner sees it: which files, what is in their footers, and what their paths say.

``list_corpus`` turns ``corpus.path`` — a Parquet file, a folder searched recursively, or a glob, on local disk
or under ``s3://`` (any scheme ``jinabatch.storage`` reaches) — into a sorted list of files with sizes and
modification times (the fingerprint that tells a changed file). Names starting with ``.`` or ``_`` are not
corpus (``_SUCCESS``, ``.crc``, a job's own ``_plan/``), nor is anything inside the job's output folder.

``inspect_files`` opens every footer (in parallel threads: on object storage a footer is a round trip) and
checks what a shard task would otherwise find out mid-run: Parquet at all, the id/text/carried columns there
with usable types, one type per column across files. A carried column missing from a file may come from the
path instead: Hive-style folders (``lang=en/part-0.parquet``), parsed by pyarrow's dataset discovery.
Everything wrong raises ``CorpusError`` naming the file; nothing has been sent to the API yet.
"""
from __future__ import annotations

import glob
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..config import CorpusSettings, StorageSettings
from ..errors import CorpusError, StorageError
from ..storage import FileStat, Storage, is_remote
from .columns import check_carried_type, check_id_type

__all__ = ["CorpusFile", "list_corpus", "inspect_files", "open_parquet"]

_WILDCARDS = "*?["


@dataclass(frozen=True)
class CorpusFile:
    """One Parquet file of the corpus, as planned."""

    uri: str  # absolute local path or scheme://bucket/key: what footers, dead letters and messages name
    fingerprint: str  # size-mtime: a changed file is re-planned
    rows: int
    row_groups: tuple[int, ...]  # rows per row group
    partition: tuple[tuple[str, Any], ...] = ()  # Hive-style values from the path, when corpus.columns asks
    offset: int = 0  # position of its first row in the whole corpus (file order, then row)

    @property
    def name(self) -> str:
        return self.uri.rstrip("/").rsplit("/", 1)[-1]


@dataclass
class Inspection:
    """What opening every footer found: the files in corpus order, the id type and the carried columns' types."""

    files: list[CorpusFile]
    id_type: pa.DataType
    column_types: dict[str, pa.DataType] = field(default_factory=dict)  # carried columns, in corpus.columns order
    partition_columns: tuple[str, ...] = ()


def _split_glob(path: str) -> tuple[str, str | None]:
    """("base folder", "pattern under it") for a path with wildcards, else (path, None)."""
    parts = path.split("/")
    for i, part in enumerate(parts):
        if any(c in part for c in _WILDCARDS):
            return "/".join(parts[:i]) or "/", "/".join(parts[i:])
    return path, None


def list_corpus(cs: CorpusSettings, settings: StorageSettings | None = None,
                exclude: Storage | None = None) -> tuple[Storage, list[FileStat]]:
    """(the corpus root, its files under that root), sorted; CorpusError when there are none."""
    path = cs.path
    base, pattern = _split_glob(path)
    if not is_remote(path) and pattern is not None:  # local glob: glob module semantics, as before
        root = Storage.open(base or ".", settings)
        matches = [m for m in glob.glob(path, recursive=True) if os.path.isfile(m)
                   and not any(part.startswith((".", "_")) for part in os.path.relpath(m, base or ".").split(os.sep))]
        stats = [root.stat(os.path.relpath(os.path.abspath(m), root.root)) for m in matches]
        files = [s for s in stats if s is not None]
    else:
        root = Storage.open(base, settings)
        root.check("corpus.path")
        single = root.stat() if pattern is None else None
        if single is not None:  # one file: its folder is the root
            parent, _, name = root.uri.rpartition("/")
            root = Storage.open(parent, settings)
            files = [FileStat(name, single.size, single.mtime_ns)]
        else:
            files = root.list(pattern=pattern, hidden=False)
    if exclude is not None:  # the job's own output folder may sit inside the corpus folder
        files = [f for f in files if not exclude.contains(root, f.path)]
    if not files:
        raise CorpusError(f"corpus.path = {path!r}: no files found (give a Parquet file, a folder of them, or a glob)")
    return root, sorted(files, key=lambda f: f.path)


def open_parquet(root: Storage, sub: str) -> pq.ParquetFile:
    """Open a corpus file; a file that is not Parquet or can't be read is a CorpusError naming it."""
    uri = root.uri_of(sub)
    try:
        return pq.ParquetFile(root.open_input_file(sub))
    except PermissionError as e:
        raise CorpusError(f"{uri}: cannot read the file ({e.strerror}); fix its permissions") from None
    except FileNotFoundError:
        raise CorpusError(f"{uri}: the file disappeared while planning; rerun when the corpus is stable") from None
    except (pa.ArrowInvalid, OSError) as e:
        if root.remote and not isinstance(e, pa.ArrowInvalid):
            raise StorageError(f"{uri}: cannot read it: {e}") from None
        raise CorpusError(f"{uri}: not a readable Parquet file ({e}); remove it from corpus.path "
                          "or convert it to Parquet") from None


def _partitions(root: Storage, files: list[FileStat], wanted: list[str]) -> tuple[list[dict[str, Any]], pa.Schema]:
    """Hive-style partition values of each file (for the carried columns that ask for them)."""
    if not wanted or not any("=" in part for f in files for part in f.path.split("/")[:-1]):
        return [{} for _ in files], pa.schema([])
    import pyarrow.dataset as pds

    dset = pds.dataset([root.path(f.path) for f in files], filesystem=root.fs, format="parquet",
                       partitioning="hive", partition_base_dir=root.root)
    keys = {frag.path: pds.get_partition_keys(frag.partition_expression) for frag in dset.get_fragments()}
    schema = dset.partitioning.schema if dset.partitioning is not None else pa.schema([])
    return [keys.get(root.path(f.path), {}) for f in files], schema


def _check_schema(uri: str, schema: pa.Schema, cs: CorpusSettings, from_path: dict[str, Any]) -> None:
    names = schema.names
    for key, col in [("corpus.id_column", cs.id_column), ("corpus.text_column", cs.text_column),
                     *[("corpus.columns", c) for c in cs.columns],
                     *[(k, c) for k, c in (("corpus.document_column", cs.document_column),
                                           ("corpus.chunk_order_column", cs.chunk_order_column)) if c]]:
        if col not in names and not (key == "corpus.columns" and col in from_path):
            raise CorpusError(f"{uri}: column {col!r} ({key}) not found; the file has {names}")
    text_t = schema.field(cs.text_column).type
    if not (pa.types.is_string(text_t) or pa.types.is_large_string(text_t)):
        raise CorpusError(f"{uri}: text column {cs.text_column!r} is {text_t}, expected a string column")
    id_t = schema.field(cs.id_column).type
    if not (pa.types.is_string(id_t) or pa.types.is_large_string(id_t) or pa.types.is_integer(id_t)):
        raise CorpusError(f"{uri}: id column {cs.id_column!r} is {id_t}, expected string or integer ids")
    check_id_type(uri, cs.id_column, id_t)  # type rules live in embed/columns.py
    for c in cs.columns:
        if c in names:
            check_carried_type(uri, c, schema.field(c).type)  # dates, timestamps, unsigned ints, ...


def inspect_files(root: Storage, stats: list[FileStat], cs: CorpusSettings, threads: int = 16) -> Inspection:
    """Open every footer and check it; CorpusError naming the first bad file (in corpus order)."""
    parts, part_schema = _partitions(root, stats, [c for c in cs.columns])

    def footer(i: int) -> tuple[pa.Schema, pq.FileMetaData]:
        pf = open_parquet(root, stats[i].path)
        return pf.schema_arrow, pf.metadata

    workers = 1 if len(stats) < 4 else (threads if root.remote else min(threads, 4))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        footers = list(pool.map(footer, range(len(stats))))
    files: list[CorpusFile] = []
    id_type, column_types, first = None, {}, None
    from_path_cols = tuple(c for c in cs.columns if c in part_schema.names)
    offset = 0
    for f, (schema, md), part in zip(stats, footers, parts):
        uri = root.uri_of(f.path)
        _check_schema(uri, schema, cs, part)
        types = {c: (schema.field(c).type if c in schema.names else part_schema.field(c).type) for c in cs.columns}
        if id_type is None:
            id_type, column_types, first = schema.field(cs.id_column).type, types, uri
        else:  # one output schema for all shards: a column typed differently in a later file fails here
            for c, want in [(cs.id_column, id_type), *column_types.items()]:
                got = schema.field(c).type if c in schema.names else types[c]
                if got != want:
                    raise CorpusError(f"{uri}: column {c!r} is {got} but {want} in {first}; "
                                      "give it the same type in every file")
        groups = tuple(md.row_group(i).num_rows for i in range(md.num_row_groups))
        partition = tuple((c, part[c]) for c in from_path_cols if c not in schema.names and c in part)
        files.append(CorpusFile(uri, f.fingerprint, md.num_rows, groups, partition, offset))
        offset += md.num_rows
    return Inspection(files, id_type or pa.string(), column_types, from_path_cols)

"""Where a Milvus server reads the files it bulk-imports, and getting them there for one load.

A Milvus server imports only files it can read from its own storage:

* **local storage** (the embedded default): an absolute path on its host;
* **MinIO/S3** (``milvus.bucket``): an object key inside that one bucket, used exactly as given — no bucket
  name, no ``s3://``, its ``minio.rootPath`` not prepended; another bucket is not readable.

So ``placement(milvus, output.path)`` is one of:

============  ===========================================================  ====================================
placement     when                                                          the server reads
============  ===========================================================  ====================================
IN_BUCKET     ``output.path`` is ``s3://<milvus.bucket>/<prefix>``          keys ``<prefix>/shards/shard-N.parquet``
                                                                            (nothing copied)
COPY          ``milvus.bucket`` set, the output anywhere else (another       keys ``<import_root>/<collection>/
              bucket, local disk, another scheme)                           shard-N.parquet`` of copies: a server-side
                                                                            copy on one S3 endpoint, else an upload
LOCAL_PATHS   no ``milvus.bucket``, output on local disk                   absolute paths of the shards
DOWNLOAD      no ``milvus.bucket``, output on object storage, the          absolute paths of copies in
              embedded server (this machine)                               ``<data_dir>/_import/<collection>/``
None          no ``milvus.bucket``, output on object storage, a remote      nothing: bulk import cannot work, the
              server                                                        load inserts (``jinabatch.load.target``)
============  ===========================================================  ====================================

Import copies with a ``$meta`` column (``jinabatch.load.staging``, for null-holding columns on a server without
nullable fields) go where that placement writes: beside the output (``{output}/_import/{collection}/``) for
IN_BUCKET and LOCAL_PATHS — inside the Milvus bucket in the first case — or where COPY / DOWNLOAD copy to.

``ImportFiles`` is one load's set: ``prepare()`` makes the copies (if any), ``files`` is what to import,
``cleanup()`` removes every copy it made — after a verified load, and after a failed one — and never raises
(a copy it cannot remove is logged with its URI and reported). ``describe()`` is what the load report says.
Copies are in a folder per collection (``{alias}__{model}_{dims}d_{stamp}/``), so those a killed load left
behind are found and removed by the next load of the alias (``remove_stale``).
"""
from __future__ import annotations

import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import MilvusSettings
from ..errors import JinaBatchError
from ..storage import Storage, is_remote
from .schema import LoadInput, ShardFile
from .staging import write_meta_copy

__all__ = ["ImportFile", "ImportFiles", "placement", "DEFAULT_IMPORT_ROOT",
           "IN_BUCKET", "COPY", "LOCAL_PATHS", "DOWNLOAD"]

log = logging.getLogger(__name__)

IN_BUCKET, COPY, LOCAL_PATHS, DOWNLOAD = "in bucket", "copy", "local paths", "download"
DEFAULT_IMPORT_ROOT = "jinabatch-import"
COPY_THREADS = 4
_STAMP = re.compile(r"_\d+d_\d{8}T\d{9}$")  # the end of a physical collection's name (load.milvus.physical_name)


def _s3_bucket(uri: str) -> str | None:
    scheme, _, rest = uri.partition("://")
    return rest.strip("/").split("/", 1)[0] if scheme in ("s3", "s3a") and rest.strip("/") else None


def placement(ms: MilvusSettings, output: str) -> str | None:
    """How a bulk import of ``output`` reaches the server of ``ms`` (see the module docstring)."""
    if ms.bucket:
        return IN_BUCKET if _s3_bucket(output) == ms.bucket else COPY
    if not is_remote(str(output)):
        return LOCAL_PATHS
    return DOWNLOAD if ms.uri == "embedded" else None


@dataclass(frozen=True)
class ImportFile:
    """One file to import: where the shard is (for messages) and what the server reads."""

    source: str  # the shard's URI (for messages)
    path: str  # what the server reads: an absolute path or an object key in its bucket
    rows: int


class ImportFiles:
    """The files one load imports, and the copies made for it."""

    def __init__(self, inp: LoadInput, ms: MilvusSettings, collection: str, dynamic: tuple[str, ...] = ()):
        where = placement(ms, inp.uri)
        if where is None:  # fill_mode inserts in this case; reaching here is a bug
            raise JinaBatchError(f"no bulk import path from {inp.uri} to Milvus at {ms.uri}")
        self.shards, self.dynamic, self.placement = inp.shards, tuple(dynamic), where
        self.reads_keys = where in (IN_BUCKET, COPY)  # a server on a bucket reads object keys, else local paths
        out = inp.storage
        if where == COPY:
            root = ms.import_root or DEFAULT_IMPORT_ROOT
            self.dest: Storage | None = Storage.open(f"s3://{ms.bucket}/{root}/{collection}", out.settings)
        elif where == DOWNLOAD:
            self.dest = Storage.open(Path(ms.data_dir) / "_import" / collection, out.settings)
        elif self.dynamic:  # import copies beside the output (inside the Milvus bucket for IN_BUCKET)
            self.dest = out.child("_import", collection)
        else:
            self.dest = None  # the shards are read where they are
        self.how = self._how(out, where)
        self.written: list[str] = []
        self.seconds = 0.0
        self.removed: bool | None = None  # None: nothing to remove yet
        self.left: list[str] = []  # copies that could not be removed

    def _how(self, out: Storage, where: str) -> str | None:
        if self.dest is None:
            return None
        if self.dynamic:
            return "import copies with $meta, written"
        if where == DOWNLOAD:
            return "download"
        return "server-side copy" if self.dest.copies_server_side(out) else "upload"

    @property
    def copying(self) -> bool:
        return self.dest is not None

    @property
    def read_from(self) -> str:
        """The folder or prefix the server reads."""
        if self.dest is not None:
            return self.dest.uri
        return self.shards[0].storage.uri_of("shards")

    def _server_path(self, storage: Storage, sub: str) -> str:
        """What the server reads for ``sub``: the object key inside its bucket, or an absolute local path."""
        return storage.object_key(sub) if self.reads_keys else storage.path(sub)

    @property
    def files(self) -> list[ImportFile]:
        """What to import, in shard order."""
        if self.dest is None:
            return [ImportFile(s.uri, self._server_path(s.storage, s.sub), s.rows) for s in self.shards]
        return [ImportFile(s.uri, self._server_path(self.dest, s.name), s.rows) for s in self.shards]

    def remove_stale(self, alias: str) -> list[str]:
        """Remove copies a killed load of ``alias`` left beside this load's folder (``{alias}__*/``: a finished or
        failed load removes its own); returns the folders cleared. Never raises."""
        if self.dest is None:
            return []
        parent_uri, _, mine = self.dest.uri.rstrip("/").rpartition("/")
        try:
            parent = Storage.open(parent_uri, self.dest.settings)
            stale: dict[str, list[str]] = {}
            for f in parent.list(pattern=f"{alias}__*/*"):
                folder = f.path.split("/", 1)[0]
                rest = folder[len(alias) + 2:]  # "{model}_{dims}d_{stamp}": not another alias's "{alias}__x__..."
                if folder != mine and "__" not in rest and _STAMP.search(rest):
                    stale.setdefault(folder, []).append(f.path)
            for folder, subs in stale.items():
                parent.delete_many(subs)
                parent.remove_dirs(folder)
                log.info("removed %d import cop%s a killed load left in %s", len(subs),
                         "y" if len(subs) == 1 else "ies", parent.uri_of(folder))
            return sorted(stale)
        except Exception as e:
            log.warning("could not look for import copies left by killed loads beside %s: %s", self.dest.uri, e)
            return []

    def prepare(self) -> None:
        """Make the copies (nothing for IN_BUCKET / LOCAL_PATHS without ``$meta``)."""
        if self.dest is None:
            return
        t0 = time.monotonic()

        def one(shard: ShardFile) -> None:
            if self.dynamic:
                write_meta_copy(shard, self.dest, shard.name, self.dynamic)
            else:
                self.dest.copy_within(shard.storage, shard.sub, shard.name)
            self.written.append(shard.name)

        with ThreadPoolExecutor(COPY_THREADS, thread_name_prefix="jb-import-copy") as pool:
            for f in [pool.submit(one, s) for s in self.shards]:
                f.result()
        self.seconds = round(time.monotonic() - t0, 3)
        log.info("%s %d shard file(s) to %s for the import (%.1f s)", self.how, len(self.written), self.dest.uri,
                 self.seconds)

    def cleanup(self) -> None:
        """Remove every copy made (also the ones of a prepare() that failed half-way). Never raises."""
        if self.dest is None or self.removed is not None and not self.left:
            return
        todo = list(self.left or self.written)
        try:
            self.dest.delete_many(todo)
            self.dest.remove_dirs(levels=2)  # its folder, and the parent (_import/) if nothing else is there
            self.left = []
        except Exception as e:  # never hide the load's own outcome
            self.left = todo
            log.warning("could not remove the import copies under %s (%s); delete them by hand", self.dest.uri, e)
        self.removed = not self.left
        if self.removed and todo:
            log.info("removed %d import cop%s under %s", len(todo), "y" if len(todo) == 1 else "ies", self.dest.uri)

    def describe(self) -> dict[str, Any]:
        """For the load report: where the server read the files, and what was copied there and removed."""
        out: dict[str, Any] = {"read_from": self.read_from, "placement": self.placement}
        if self.dest is not None:
            out["copies"] = {"files": len(self.written), "how": self.how, "seconds": self.seconds,
                             "removed": bool(self.removed), **({"left": self.left} if self.left else {})}
        return out

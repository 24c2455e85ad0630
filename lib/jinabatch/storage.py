"""Where the job reads and writes: a local folder or an object-store prefix, one class per kind behind one interface.

``Storage.open("s3://bucket/prefix")`` or ``Storage.open("/data/out")`` gives a root and the pyarrow
filesystem that reaches it; every stage addresses files by their path *under* the root (``"shards/x.parquet"``),
so the same code runs on a laptop and on a cluster whose nodes share no disk. Reads and listings are pyarrow's
for every kind; what differs is how a file appears whole, and lives in the class of its kind:

* ``LocalStorage`` (a path): absolute paths, writes to a temp file renamed into place.
* ``S3Storage`` (``s3://``, AWS or any S3-compatible store): writes through boto3, because an S3 object only
  appears when its PUT or multipart upload *completes* and boto3's transfer manager aborts a failed multipart
  upload — pyarrow's output stream completes whatever it holds when it is closed or garbage-collected, which
  would leave a partial object under a final key. A finished file is written locally first and uploaded to its
  final key once (``upload``); uploads a killed worker abandoned are aborted by ``abort_multipart_uploads``.
* ``ArrowStorage`` (other schemes pyarrow or fsspec know: ``gs://``, ``az://``...): pyarrow's filesystem, a temp
  key moved into place. Best effort: tested here with fsspec's in-memory filesystem only.

Endpoint and credentials come from the standard AWS variables that boto3, the AWS CLI and pyarrow read
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION``, ``AWS_ENDPOINT_URL``)
or an instance role; ``[storage]`` may set the endpoint and region, never a secret. Every node builds its own
filesystem from its own environment: only URIs and the non-secret settings travel in task arguments. Errors
are ``StorageError`` with one line naming the URI; credentials are scrubbed from any message.
"""
from __future__ import annotations

import fnmatch
import json
import os
import posixpath
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.fs as pafs

from .config import StorageSettings
from .errors import StorageError

__all__ = ["Storage", "LocalStorage", "S3Storage", "ArrowStorage", "FileStat", "is_remote", "join_uri",
           "s3_endpoint", "s3_region"]

_SECRET_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")


def is_remote(uri: str) -> bool:
    """True for ``scheme://...`` URIs other than ``file://``."""
    return "://" in uri and not uri.startswith("file://")


def join_uri(uri: str, *parts: str) -> str:
    """``uri`` with ``parts`` appended, one ``/`` between each."""
    base = uri.rstrip("/")
    rest = "/".join(p.strip("/") for p in parts if p)
    return f"{base}/{rest}" if rest else base


def s3_endpoint(settings: StorageSettings) -> str | None:
    """The S3 endpoint every client here uses: ``storage.endpoint``, else ``$AWS_ENDPOINT_URL_S3`` /
    ``$AWS_ENDPOINT_URL``, else None (AWS itself)."""
    return settings.endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def s3_region(settings: StorageSettings) -> str:
    """``storage.region``, else ``$AWS_REGION`` / ``$AWS_DEFAULT_REGION``, else us-east-1."""
    return settings.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def _scrub(text: str) -> str:
    for var in _SECRET_VARS:
        value = os.environ.get(var)
        if value and len(value) >= 8:
            text = text.replace(value, "***")
    return text


def _temp_name(sub: str) -> str:
    return f"{posixpath.basename(sub)}.tmp-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class FileStat:
    """A file under the root: its path there, size and modification time."""

    path: str  # under the root, "/"-separated
    size: int
    mtime_ns: int

    @property
    def fingerprint(self) -> str:
        """Size and modification time: what tells a changed file from the same one."""
        return f"{self.size}-{self.mtime_ns}"


class Storage:
    """A root folder/prefix and its filesystem. ``Storage.open(uri)`` gives the class of the URI's kind; cheap to
    build, build one per process from the URI (it pickles as its URI and settings, never a filesystem)."""

    kind: ClassVar[str]  # "local" | "s3" | "other": for messages, never to branch on
    remote: ClassVar[bool] = True  # reached over a network: each read is a round trip (worth threads)

    def __init__(self, uri: str, fs: pafs.FileSystem, root: str, settings: StorageSettings):
        self.uri, self.fs, self.root, self.settings = uri, fs, root.rstrip("/"), settings

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"

    def __reduce__(self):  # rebuilt from the URI on the other side: a filesystem object never travels
        return (Storage.open, (self.uri, self.settings))

    # -- opening ---------------------------------------------------------------------------------
    @staticmethod
    def open(uri: str | os.PathLike[str], settings: StorageSettings | None = None) -> "Storage":
        """The storage rooted at ``uri``: a local path (or ``file://``), ``s3://bucket/prefix``, or another scheme
        pyarrow or fsspec knows. StorageError for a URI without a bucket or a scheme nothing here can reach."""
        settings = settings or StorageSettings()
        uri = str(uri)
        if uri.startswith("file://"):
            uri = uri[len("file://"):]
        if not is_remote(uri):
            return LocalStorage.at(uri, settings)
        scheme, _, rest = uri.partition("://")
        rest = rest.strip("/")
        if not rest:
            raise StorageError(f"{uri}: no bucket in the URI; write {scheme}://bucket/prefix")
        if scheme in ("s3", "s3a"):
            return S3Storage.at(rest, settings)
        return ArrowStorage.at(uri, scheme, settings)

    # -- addressing ------------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        """The filesystem path of ``parts`` under the root."""
        rest = "/".join(p.strip("/") for p in parts if p)
        return f"{self.root}/{rest}" if rest else self.root

    def uri_of(self, *parts: str) -> str:
        return join_uri(self.uri, *parts)

    def child(self, *parts: str) -> "Storage":
        """The storage rooted at ``parts`` under this root."""
        return Storage.open(self.uri_of(*parts), self.settings)

    def relative(self, fs_path: str) -> str:
        """The path under the root of a filesystem path inside it."""
        fs_path, root = fs_path.lstrip("/"), self.root.lstrip("/")  # fsspec stores may answer "/bucket/key"
        return posixpath.relpath(fs_path, root) if fs_path != root else ""

    def contains(self, other: "Storage", sub: str = "") -> bool:
        """True if ``other``'s root (or its path ``sub``) is this root or inside it, on the same kind of store."""
        full = other.path(sub)
        return type(other) is type(self) and (full == self.root or full.startswith(self.root + "/"))

    def local_path(self, sub: str) -> str | None:
        """The path of ``sub`` on this machine's disk, if it is on it."""
        return None

    # -- errors ----------------------------------------------------------------------------------
    def _error(self, what: str, e: BaseException, sub: str = "") -> StorageError:
        msg = _scrub(str(e)).splitlines()[0] if str(e) else type(e).__name__
        hint = ""
        low = msg.lower()
        if "no_such_bucket" in low or "nosuchbucket" in low or "bucket does not exist" in low:
            hint = "; create the bucket or fix the URI"
        elif "signature" in low or "access_denied" in low or "accessdenied" in low or "invalidaccesskeyid" in low:
            hint = "; check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the instance role) for this bucket"
        elif "network_connection" in low or "could not connect" in low or "resolve" in low or "timed out" in low:
            hint = "; check AWS_ENDPOINT_URL / storage.endpoint and that the store answers"
        return StorageError(f"{self.uri_of(sub)}: cannot {what}: {msg}{hint}")

    # -- reading ---------------------------------------------------------------------------------
    def stat(self, sub: str = "") -> FileStat | None:
        """The file at ``sub`` (None if there is none; a folder is not a file)."""
        try:
            info = self.fs.get_file_info(self.path(sub))
        except OSError as e:
            raise self._error("read", e, sub) from None
        if info.type != pafs.FileType.File:
            return None
        return FileStat(sub, int(info.size or 0), int(info.mtime_ns or 0))

    def is_dir(self, sub: str = "") -> bool:
        try:
            return self.fs.get_file_info(self.path(sub)).type == pafs.FileType.Directory
        except OSError as e:
            raise self._error("read", e, sub) from None

    def list(self, sub: str = "", *, recursive: bool = True, pattern: str | None = None,
             hidden: bool = True) -> list[FileStat]:
        """Files under ``sub``, sorted by path; ``pattern`` filters the path under ``sub`` (fnmatch);
        ``hidden=False`` drops any whose name starts with ``.`` or ``_``. A missing folder lists nothing;
        a missing bucket, bad credentials or a dead endpoint raise ``StorageError``."""
        base = self.path(sub)
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=recursive, allow_not_found=True))
        except OSError as e:
            raise self._error("list files", e, sub) from None
        out = []
        for info in infos:
            if info.type != pafs.FileType.File:
                continue
            rel = self.relative(info.path)
            under = posixpath.relpath(rel, sub.strip("/")) if sub.strip("/") else rel
            if not hidden and any(part.startswith((".", "_")) for part in under.split("/")):
                continue
            if pattern and not fnmatch.fnmatchcase(under, pattern):
                continue
            out.append(FileStat(rel, int(info.size or 0), int(info.mtime_ns or 0)))
        return sorted(out, key=lambda f: f.path)

    def check(self, what: str) -> None:
        """Reach the root once (bucket exists, credentials valid, endpoint answers), naming ``what`` on failure."""
        try:
            self.fs.get_file_info(pafs.FileSelector(self.root, recursive=False, allow_not_found=True))
        except OSError as e:
            raise StorageError(f"{what} = {self._error('reach it', e)}") from None

    def read_bytes(self, sub: str) -> bytes | None:
        """The content of ``sub`` (None if there is no such file)."""
        try:
            with self.fs.open_input_stream(self.path(sub)) as f:
                return f.read()
        except FileNotFoundError:
            return None
        except OSError as e:
            if self.stat(sub) is None:
                return None
            raise self._error("read", e, sub) from None

    def read_json(self, sub: str) -> Any:
        data = self.read_bytes(sub)
        return None if data is None else json.loads(data)

    def open_input_file(self, sub: str):
        """A random-access file for ``pyarrow.parquet.ParquetFile``."""
        return self.fs.open_input_file(self.path(sub))

    # -- writing: each file appears whole or not at all --------------------------------------------
    def write_bytes(self, sub: str, data: bytes) -> None:
        """Write ``data`` to ``sub`` so that readers see the old content or the new, never a part."""
        try:
            self._put_bytes(sub, data)
        except StorageError:
            raise
        except Exception as e:  # botocore and pyarrow raise several types
            raise self._error("write", e, sub) from None

    def write_json(self, sub: str, data: Any) -> None:
        self.write_bytes(sub, json.dumps(data, indent=2, sort_keys=True, default=str).encode())

    def local_temp(self, sub: str) -> Path:
        """Where to build a file bound for ``sub`` before ``upload``: in the node's temp folder (beside the final
        path on a local disk, so the final step is a rename)."""
        return Path(tempfile.gettempdir()) / "jinabatch" / _temp_name(sub)

    def upload(self, local: Path, sub: str) -> None:
        """Move a finished local file to ``sub``: it appears there complete, or not at all."""
        try:
            self._put_file(local, sub)
        except Exception as e:
            raise self._error("write", e, sub) from None
        finally:
            local.unlink(missing_ok=True)

    def copy_within(self, src: "Storage", src_sub: str, sub: str) -> None:
        """Copy ``src``'s file ``src_sub`` to ``sub`` here (server-side where the store can)."""
        try:
            self._copy(src, src_sub, sub)
        except Exception as e:
            raise self._error(f"copy {src.uri_of(src_sub)} here", e, sub) from None

    def copies_server_side(self, src: "Storage") -> bool:
        """True if ``copy_within`` from ``src`` is done by the store itself (no bytes through this machine)."""
        return False

    def delete(self, sub: str) -> None:
        """Remove the file ``sub`` (nothing if it is not there)."""
        try:
            self.fs.delete_file(self.path(sub))
        except FileNotFoundError:
            pass
        except OSError as e:
            if self.stat(sub) is not None:
                raise self._error("delete", e, sub) from None

    def delete_many(self, subs: list[str]) -> None:
        for s in subs:
            self.delete(s)

    def remove_dirs(self, sub: str = "", levels: int = 1) -> None:
        """Remove the folder ``sub`` and then its parents, ``levels`` folders in all, while they are empty (object
        stores keep no folders: nothing to do there)."""

    def clean_temps(self, sub: str) -> None:
        """Remove temp files a killed attempt left while building ``sub`` (only a local disk keeps them)."""

    def abort_multipart_uploads(self, sub: str = "") -> int:
        """Abort uploads under ``sub`` that were started and never completed (a killed worker's); returns how many.
        Call when no upload of this run is in flight. Only object stores have them."""
        return 0

    # -- what each kind does its own way -----------------------------------------------------------
    def _put_bytes(self, sub: str, data: bytes) -> None:
        tmp = f"{self.path(sub)}.tmp-{uuid.uuid4().hex[:8]}"
        with self.fs.open_output_stream(tmp) as out:
            out.write(data)
        self.fs.move(tmp, self.path(sub))

    def _put_file(self, local: Path, sub: str) -> None:
        tmp = f"{self.path(sub)}.tmp-{uuid.uuid4().hex[:8]}"
        pafs.copy_files(str(local), tmp, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs)
        self.fs.move(tmp, self.path(sub))

    def _copy(self, src: "Storage", src_sub: str, sub: str) -> None:
        pafs.copy_files(src.path(src_sub), self.path(sub), source_filesystem=src.fs, destination_filesystem=self.fs)


class LocalStorage(Storage):
    """A folder on this machine's disk: a file appears by a rename in its folder."""

    kind, remote = "local", False

    @classmethod
    def at(cls, path: str, settings: StorageSettings) -> "LocalStorage":
        """The storage of the folder ``path`` (``~`` expanded, made absolute)."""
        root = str(Path(path).expanduser().resolve())
        return cls(root, pafs.LocalFileSystem(), root, settings)

    def child(self, *parts: str) -> "Storage":
        return LocalStorage(self.path(*parts), self.fs, self.path(*parts), self.settings)

    def local_path(self, sub: str) -> str | None:
        return self.path(sub)

    def check(self, what: str) -> None:
        pass  # a folder that does not exist yet is made by the first write

    def local_temp(self, sub: str) -> Path:
        final = Path(self.path(sub))
        final.parent.mkdir(parents=True, exist_ok=True)
        return final.with_name(_temp_name(sub))

    def clean_temps(self, sub: str) -> None:
        final = Path(self.path(sub))
        for stale in final.parent.glob(final.name + ".tmp-*"):
            stale.unlink(missing_ok=True)

    def remove_dirs(self, sub: str = "", levels: int = 1) -> None:
        folder = Path(self.path(sub))
        for d in [folder, *folder.parents][:levels]:
            try:
                d.rmdir()
            except OSError:  # not empty (or gone): leave it, and its parents
                return

    def _put_bytes(self, sub: str, data: bytes) -> None:
        final = Path(self.path(sub))
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{_temp_name(sub)}")  # hidden from listings that skip dot files
        tmp.write_bytes(data)
        os.replace(tmp, final)

    def _put_file(self, local: Path, sub: str) -> None:
        final = Path(self.path(sub))
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(local, final)

    def _copy(self, src: Storage, src_sub: str, sub: str) -> None:
        Path(self.path(sub)).parent.mkdir(parents=True, exist_ok=True)
        super()._copy(src, src_sub, sub)


class S3Storage(Storage):
    """A prefix in an S3 bucket: reads through pyarrow, writes through boto3 (one client per storage, made on
    first use, safe to share between threads)."""

    kind = "s3"

    def __init__(self, uri: str, fs: pafs.FileSystem, root: str, settings: StorageSettings):
        super().__init__(uri, fs, root, settings)
        self._boto = None
        self._boto_lock = threading.Lock()

    @classmethod
    def at(cls, bucket_and_prefix: str, settings: StorageSettings) -> "S3Storage":
        """The storage of ``s3://BUCKET_AND_PREFIX`` (endpoint, region, timeouts and retries from ``settings``)."""
        fs = pafs.S3FileSystem(
            region=s3_region(settings), endpoint_override=s3_endpoint(settings),
            connect_timeout=settings.connect_timeout, request_timeout=settings.request_timeout,
            retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=settings.max_attempts))
        return cls(f"s3://{bucket_and_prefix}", fs, bucket_and_prefix, settings)

    @property
    def bucket(self) -> str:
        return self.root.split("/", 1)[0]

    @property
    def key_prefix(self) -> str:
        """The key of the root inside its bucket ("" at the bucket's top)."""
        return self.root.split("/", 1)[1] if "/" in self.root else ""

    def object_key(self, sub: str) -> str:
        """The object key of ``sub`` inside the bucket."""
        return self.path(sub).partition("/")[2]

    def check(self, what: str) -> None:
        try:
            missing = self.fs.get_file_info(self.bucket).type == pafs.FileType.NotFound
        except OSError as e:
            raise StorageError(f"{what} = {self._error('reach it', e)}") from None
        if missing:
            raise StorageError(f"{what} = {self.uri}: bucket {self.bucket!r} does not exist; create the bucket "
                               "or fix the URI")
        super().check(what)

    def copies_server_side(self, src: Storage) -> bool:
        return isinstance(src, S3Storage) and src.settings.endpoint == self.settings.endpoint

    def _s3_client(self):
        with self._boto_lock:
            if self._boto is None:
                import boto3
                from botocore.config import Config as BotoConfig

                endpoint = self.settings.endpoint or None  # boto3 reads AWS_ENDPOINT_URL itself
                self._boto = boto3.client("s3", endpoint_url=endpoint, region_name=s3_region(self.settings),
                                          config=BotoConfig(connect_timeout=self.settings.connect_timeout,
                                                            read_timeout=self.settings.request_timeout,
                                                            retries={"max_attempts": self.settings.max_attempts,
                                                                     "mode": "standard"}))
            return self._boto

    def _put_bytes(self, sub: str, data: bytes) -> None:
        self._s3_client().put_object(Bucket=self.bucket, Key=self.object_key(sub), Body=data)

    def _put_file(self, local: Path, sub: str) -> None:
        self._s3_client().upload_file(str(local), self.bucket, self.object_key(sub))

    def _copy(self, src: Storage, src_sub: str, sub: str) -> None:
        if self.copies_server_side(src):
            self._s3_client().copy({"Bucket": src.bucket, "Key": src.object_key(src_sub)}, self.bucket,
                                   self.object_key(sub))
        elif (path := src.local_path(src_sub)) is not None:
            self._s3_client().upload_file(path, self.bucket, self.object_key(sub))
        else:
            super()._copy(src, src_sub, sub)

    def delete_many(self, subs: list[str]) -> None:
        if not subs:
            return
        client = self._s3_client()
        keys = [self.object_key(s) for s in subs]
        for i in range(0, len(keys), 1000):  # 1,000 keys a request is S3's cap
            try:
                resp = client.delete_objects(Bucket=self.bucket, Delete={
                    "Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True})
            except Exception as e:  # botocore raises several types
                raise self._error(f"delete {len(keys[i:i + 1000])} object(s)", e) from None
            # "Quiet" answers only with the keys it could not delete: a stale shard left behind would be
            # loaded with the new ones, so any failure stops here
            errors = [e for e in resp.get("Errors") or [] if e.get("Code") != "NoSuchKey"]
            if errors:
                first = errors[0]
                raise StorageError(f"{self.uri}: cannot delete {len(errors)} object(s), e.g. "
                                   f"s3://{self.bucket}/{first.get('Key')}: {first.get('Code')} "
                                   f"{_scrub(str(first.get('Message') or ''))}; check delete permission on "
                                   "the bucket and run again")

    def abort_multipart_uploads(self, sub: str = "") -> int:
        client = self._s3_client()
        n = 0
        try:
            pages = client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket,
                                                                             Prefix=self.object_key(sub))
            for page in pages:
                for u in page.get("Uploads", []) or []:
                    client.abort_multipart_upload(Bucket=self.bucket, Key=u["Key"], UploadId=u["UploadId"])
                    n += 1
        except Exception as e:
            raise self._error("clean up abandoned uploads", e, sub) from None
        return n


class ArrowStorage(Storage):
    """Another scheme pyarrow knows, or fsspec does (through pyarrow's adapter): a temp key moved into place."""

    kind = "other"

    @classmethod
    def at(cls, uri: str, scheme: str, settings: StorageSettings) -> "ArrowStorage":
        """The storage of ``uri`` through pyarrow's filesystem for its scheme, else fsspec's."""
        try:
            fs, root = pafs.FileSystem.from_uri(uri)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError):
            fs, root = cls._fsspec(uri, scheme)
        return cls(uri.rstrip("/"), fs, root, settings)

    @staticmethod
    def _fsspec(uri: str, scheme: str) -> tuple[pafs.FileSystem, str]:
        try:
            import fsspec
            from pyarrow.fs import FSSpecHandler, PyFileSystem
        except ImportError:
            raise StorageError(f"{uri}: pyarrow has no filesystem for {scheme}:// and fsspec is not installed; "
                               f"install fsspec and the package for {scheme}://") from None
        try:
            fs = fsspec.filesystem(scheme)
        except (ImportError, ValueError) as e:
            raise StorageError(f"{uri}: no filesystem for {scheme}:// ({e}); install the package fsspec names") from None
        return PyFileSystem(FSSpecHandler(fs)), uri.split("://", 1)[1].rstrip("/")

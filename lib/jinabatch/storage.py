"""Where the job reads and writes: a local folder or an object-store prefix, behind one small class.

``Storage.open("s3://bucket/prefix")`` or ``Storage.open("/data/out")`` gives a root and the pyarrow
filesystem that reaches it; every stage addresses files by their path *under* the root (``"shards/x.parquet"``),
so the same code runs on a laptop and on a cluster whose nodes share no disk.

* **Local paths** keep today's behaviour: absolute paths, writes to a temp file renamed into place.
* **``s3://``** (AWS or any S3-compatible store): reads and listings through pyarrow's ``S3FileSystem``;
  writes through boto3, because an S3 object only appears when its PUT or multipart upload *completes* and
  boto3's transfer manager aborts a failed multipart upload — pyarrow's output stream completes whatever it
  holds when it is closed or garbage-collected, which would leave a partial object under a final key. A
  finished file is written locally first and uploaded to its final key once (``upload``); uploads a killed
  worker abandoned are aborted by ``abort_multipart_uploads``.
* **Other schemes pyarrow or fsspec know** (``gs://``, ``az://``...): pyarrow's filesystem, a temp key moved
  into place. Best effort: tested here with fsspec's in-memory filesystem only.

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
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from .config import StorageSettings
from .errors import StorageError

__all__ = ["Storage", "FileStat", "is_remote", "join_uri", "s3_endpoint", "s3_region"]

_SECRET_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")


def is_remote(uri: str) -> bool:
    """True for ``scheme://...`` URIs other than ``file://``."""
    return "://" in uri and not uri.startswith("file://")


def join_uri(uri: str, *parts: str) -> str:
    base = uri.rstrip("/")
    rest = "/".join(p.strip("/") for p in parts if p)
    return f"{base}/{rest}" if rest else base


def s3_endpoint(settings: StorageSettings) -> str | None:
    """The S3 endpoint every client here uses: ``storage.endpoint``, else ``$AWS_ENDPOINT_URL_S3`` /
    ``$AWS_ENDPOINT_URL``, else None (AWS itself)."""
    return settings.endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def s3_region(settings: StorageSettings) -> str:
    return settings.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def _scrub(text: str) -> str:
    for var in _SECRET_VARS:
        value = os.environ.get(var)
        if value and len(value) >= 8:
            text = text.replace(value, "***")
    return text


@dataclass(frozen=True)
class FileStat:
    path: str  # under the root, "/"-separated
    size: int
    mtime_ns: int

    @property
    def fingerprint(self) -> str:
        """Size and modification time: what tells a changed file from the same one."""
        return f"{self.size}-{self.mtime_ns}"


class Storage:
    """A root folder/prefix and its filesystem. Cheap to build; build one per process from the URI."""

    def __init__(self, uri: str, fs: pafs.FileSystem, root: str, kind: str, settings: StorageSettings):
        self.uri, self.fs, self.root, self.kind, self.settings = uri, fs, root.rstrip("/"), kind, settings
        self._boto = None

    def __repr__(self) -> str:
        return f"Storage({self.uri!r})"

    def __reduce__(self):  # rebuilt from the URI on the other side: a filesystem object never travels
        return (Storage.open, (self.uri, self.settings))

    # -- opening ---------------------------------------------------------------------------------
    @classmethod
    def open(cls, uri: str | os.PathLike[str], settings: StorageSettings | None = None) -> "Storage":
        settings = settings or StorageSettings()
        uri = str(uri)
        if uri.startswith("file://"):
            uri = uri[len("file://"):]
        if not is_remote(uri):
            root = str(Path(uri).expanduser().resolve())
            return cls(root, pafs.LocalFileSystem(), root, "local", settings)
        scheme, _, rest = uri.partition("://")
        rest = rest.strip("/")
        if not rest:
            raise StorageError(f"{uri}: no bucket in the URI; write {scheme}://bucket/prefix")
        if scheme in ("s3", "s3a"):
            return cls(f"s3://{rest}", cls._s3(settings), rest, "s3", settings)
        try:
            fs, root = pafs.FileSystem.from_uri(uri)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError):
            fs, root = cls._fsspec(uri, scheme)
        return cls(uri.rstrip("/"), fs, root, "other", settings)

    @staticmethod
    def _s3(settings: StorageSettings) -> pafs.S3FileSystem:
        return pafs.S3FileSystem(
            region=s3_region(settings), endpoint_override=s3_endpoint(settings),
            connect_timeout=settings.connect_timeout, request_timeout=settings.request_timeout,
            retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=settings.max_attempts))

    @staticmethod
    def _fsspec(uri: str, scheme: str):
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

    # -- addressing ------------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        rest = "/".join(p.strip("/") for p in parts if p)
        return f"{self.root}/{rest}" if rest else self.root

    def uri_of(self, *parts: str) -> str:
        return join_uri(self.uri, *parts)

    def child(self, *parts: str) -> "Storage":
        return Storage.open(self.uri_of(*parts), self.settings) if self.kind != "local" else \
            Storage(self.path(*parts), self.fs, self.path(*parts), "local", self.settings)

    def relative(self, fs_path: str) -> str:
        """The path under the root of a filesystem path inside it."""
        root = self.root
        if self.kind != "local":  # fsspec stores may answer "/bucket/key" for "bucket/key"
            fs_path, root = fs_path.lstrip("/"), root.lstrip("/")
        return posixpath.relpath(fs_path, root) if fs_path != root else ""

    def contains(self, other: "Storage") -> bool:
        """True if ``other`` is this root or inside it (same filesystem kind)."""
        return other.kind == self.kind and (other.root == self.root or other.root.startswith(self.root + "/"))

    @property
    def bucket(self) -> str | None:
        return self.root.split("/", 1)[0] if self.kind == "s3" else None

    @property
    def key_prefix(self) -> str:
        """For s3: the key of the root inside its bucket ("" at the bucket's top)."""
        return self.root.split("/", 1)[1] if self.kind == "s3" and "/" in self.root else ""

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
        if self.kind == "local":
            return
        try:
            if self.kind == "s3" and self.fs.get_file_info(self.bucket).type == pafs.FileType.NotFound:
                raise StorageError(f"{what} = {self.uri}: bucket {self.bucket!r} does not exist; create the bucket "
                                   "or fix the URI")
            self.fs.get_file_info(pafs.FileSelector(self.root, recursive=False, allow_not_found=True))
        except OSError as e:
            raise StorageError(f"{what} = {self._error('reach it', e)}") from None

    def read_bytes(self, sub: str) -> bytes | None:
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

    # -- writing ---------------------------------------------------------------------------------
    def _s3_client(self):
        if self._boto is None:
            import boto3
            from botocore.config import Config as BotoConfig

            endpoint = self.settings.endpoint or None  # boto3 reads AWS_ENDPOINT_URL itself
            region = s3_region(self.settings)
            self._boto = boto3.client("s3", endpoint_url=endpoint, region_name=region, config=BotoConfig(
                connect_timeout=self.settings.connect_timeout, read_timeout=self.settings.request_timeout,
                retries={"max_attempts": self.settings.max_attempts, "mode": "standard"}))
        return self._boto

    def _key(self, sub: str) -> tuple[str, str]:
        bucket, _, key = self.path(sub).partition("/")
        return bucket, key

    def write_bytes(self, sub: str, data: bytes) -> None:
        """Write ``data`` to ``sub`` so that readers see the old content or the new, never a part."""
        try:
            if self.kind == "local":
                final = Path(self.path(sub))
                final.parent.mkdir(parents=True, exist_ok=True)
                tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
                tmp.write_bytes(data)
                os.replace(tmp, final)
            elif self.kind == "s3":
                bucket, key = self._key(sub)
                self._s3_client().put_object(Bucket=bucket, Key=key, Body=data)
            else:
                tmp = f"{self.path(sub)}.tmp-{uuid.uuid4().hex[:8]}"
                with self.fs.open_output_stream(tmp) as out:
                    out.write(data)
                self.fs.move(tmp, self.path(sub))
        except StorageError:
            raise
        except Exception as e:  # botocore and pyarrow raise several types
            raise self._error("write", e, sub) from None

    def write_json(self, sub: str, data: Any) -> None:
        self.write_bytes(sub, json.dumps(data, indent=2, sort_keys=True, default=str).encode())

    def local_temp(self, sub: str) -> Path:
        """Where to build a file bound for ``sub`` before ``upload``: beside it for a local root (same
        filesystem, so the final step is a rename), in the node's temp folder otherwise."""
        name = f"{posixpath.basename(sub)}.tmp-{uuid.uuid4().hex[:8]}"
        if self.kind == "local":
            final = Path(self.path(sub))
            final.parent.mkdir(parents=True, exist_ok=True)
            return final.with_name(name)
        return Path(tempfile.gettempdir()) / "jinabatch" / name

    def upload(self, local: Path, sub: str) -> None:
        """Move a finished local file to ``sub``: it appears there complete, or not at all."""
        try:
            if self.kind == "local":
                final = Path(self.path(sub))
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(local, final)
                return
            if self.kind == "s3":
                bucket, key = self._key(sub)
                self._s3_client().upload_file(str(local), bucket, key)
            else:
                tmp = f"{self.path(sub)}.tmp-{uuid.uuid4().hex[:8]}"
                pafs.copy_files(str(local), tmp, source_filesystem=pafs.LocalFileSystem(),
                                destination_filesystem=self.fs)
                self.fs.move(tmp, self.path(sub))
        except Exception as e:
            raise self._error("write", e, sub) from None
        finally:
            if self.kind != "local":
                local.unlink(missing_ok=True)

    def delete(self, sub: str) -> None:
        try:
            self.fs.delete_file(self.path(sub))
        except FileNotFoundError:
            pass
        except OSError as e:
            if self.stat(sub) is not None:
                raise self._error("delete", e, sub) from None

    def delete_many(self, subs: list[str]) -> None:
        if self.kind == "s3" and subs:
            bucket = self.bucket
            client = self._s3_client()
            keys = [self._key(s)[1] for s in subs]
            for i in range(0, len(keys), 1000):  # 1,000 keys a request is S3's cap
                try:
                    resp = client.delete_objects(Bucket=bucket, Delete={
                        "Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True})
                except Exception as e:  # botocore raises several types
                    raise self._error(f"delete {len(keys[i:i + 1000])} object(s)", e) from None
                # "Quiet" answers only with the keys it could not delete: a stale shard left behind would be
                # loaded with the new ones, so any failure stops here
                errors = [e for e in resp.get("Errors") or [] if e.get("Code") != "NoSuchKey"]
                if errors:
                    first = errors[0]
                    raise StorageError(f"{self.uri}: cannot delete {len(errors)} object(s), e.g. "
                                       f"s3://{bucket}/{first.get('Key')}: {first.get('Code')} "
                                       f"{_scrub(str(first.get('Message') or ''))}; check delete permission on "
                                       "the bucket and run again")
            return
        for s in subs:
            self.delete(s)

    def copy_within(self, src: "Storage", src_sub: str, sub: str) -> None:
        """Copy ``src``'s file to ``sub`` here: a server-side copy when both are on one S3 endpoint."""
        try:
            if self.kind == "s3" and src.kind == "s3" and src.settings.endpoint == self.settings.endpoint:
                sb, sk = src._key(src_sub)
                db, dk = self._key(sub)
                self._s3_client().copy({"Bucket": sb, "Key": sk}, db, dk)
            elif self.kind == "s3" and src.kind == "local":
                bucket, key = self._key(sub)
                self._s3_client().upload_file(src.path(src_sub), bucket, key)
            else:
                pafs.copy_files(src.path(src_sub), self.path(sub), source_filesystem=src.fs,
                                destination_filesystem=self.fs)
        except Exception as e:
            raise self._error(f"copy {src.uri_of(src_sub)} here", e, sub) from None

    def abort_multipart_uploads(self, sub: str = "") -> int:
        """Abort multipart uploads under ``sub`` that were started and never completed (a killed worker's);
        returns how many. Only for s3; call when no upload of this run is in flight."""
        if self.kind != "s3":
            return 0
        bucket, prefix = self._key(sub)
        client = self._s3_client()
        n = 0
        try:
            pages = client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix)
            for page in pages:
                for u in page.get("Uploads", []) or []:
                    client.abort_multipart_upload(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"])
                    n += 1
        except Exception as e:
            raise self._error("clean up abandoned uploads", e, sub) from None
        return n

"""What the Milvus being loaded into can hold, and how the carried columns are laid out in it.

Milvus 2.5 added nullable scalar fields; 2.3 and 2.4 have none (and 2.3.5 silently drops ``nullable=True``
from a schema, then imports a Parquet null as 0, "" or false). So the layout of a load depends on the server:

* **nullable fields** (Milvus ≥ 2.5, Milvus Lite ≥ 2.5 — the installed 3.x has them): every carried column is
  a typed field declared ``nullable``; a null is a null (``title is null`` works).
* **no nullable fields** (Milvus 2.3 / 2.4, e.g. the embedded 2.3.5): a column without nulls is a typed field
  as before; a column holding a null becomes a key of the collection's dynamic field (``$meta``), absent in
  the rows where the value is null. Filters read the same (``score > 5``, ``title == "x"``); a row whose key
  is absent matches no comparison (but does match ``!=`` and ``not``), and search output shows it as null.

``server_info`` reads the version of a connected target; ``probe_server`` finds it at plan time without
starting anything (the embedded server's version is the installed ``milvus`` package's unless one is
already running; Milvus Lite's is the installed ``milvus-lite``'s). An unknown version counts as "no
nullable fields" — the dynamic-field layout loads on every Milvus from 2.3 on.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import metadata

from ..config import MilvusSettings
from ..errors import ConfigError

__all__ = ["ServerInfo", "Layout", "server_info", "probe_server", "parse_version", "choose_layout", "fill_mode",
           "NULLABLE_SINCE", "MAX_FIELDS", "BULK", "BULK_COPIES", "INSERT"]

NULLABLE_SINCE = (2, 5)
BULK, BULK_COPIES, INSERT = "bulk", "bulk (import copies)", "insert"  # how a load fills its collection
MAX_FIELDS = 64  # Milvus's default proxy.maxFieldNum (the dynamic field counts as one)


def parse_version(text: str) -> tuple[int, int] | None:
    """(major, minor) from what get_server_version says: ``v2.3.5-lite``, ``milvus_lite-3.2.2``,
    ``... (Compatible with Milvus 2.5)``; None if there is no version in it."""
    m = re.search(r"(\d+)\.(\d+)(?:\.\d+)?", text or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


@dataclass(frozen=True)
class ServerInfo:
    """What the Milvus server is: "server" or "lite", its version, whether it has nullable fields."""

    kind: str  # "server" | "lite"
    version: str  # as the server (or the installed package) reports it
    nullable: bool  # has nullable scalar fields

    @classmethod
    def of(cls, kind: str, version: str) -> "ServerInfo":
        v = parse_version(version)
        return cls(kind, version, v is not None and v >= NULLABLE_SINCE)

    def describe(self) -> str:
        what = "Milvus Lite" if self.kind == "lite" else "Milvus"
        return f"{what} {self.version} ({'nullable fields' if self.nullable else 'no nullable fields'})"


def server_info(target) -> ServerInfo:
    """The capabilities of a connected ``jinabatch.load.milvus.Target``."""
    try:
        version = str(target.client.get_server_version())
    except Exception:
        version = "unknown"
    return ServerInfo.of(target.kind, version)


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


def probe_server(settings: MilvusSettings, timeout: float = 10.0) -> ServerInfo:
    """The load target's capabilities, found without starting a server (ConfigError if a remote one is
    unreachable: better now than after the embed stage has spent the tokens)."""
    uri = settings.uri
    if uri == "embedded":
        from .server import milvus_answers

        if milvus_answers(settings.port):
            return _ask(f"http://127.0.0.1:{settings.port}", "server", settings, timeout)
        return ServerInfo.of("server", f"v{_package_version('milvus')} (the embedded server of the milvus package)")
    if uri.endswith(".db"):
        return ServerInfo.of("lite", f"milvus_lite-{_package_version('milvus-lite')}")
    if uri.startswith(("http://", "https://", "tcp://", "grpc://")):
        return _ask(uri, "server", settings, timeout)
    raise ConfigError(f"milvus.uri = {uri!r}: use \"embedded\", a Milvus Lite file ending in .db, "
                      "or a server address like http://host:19530")


def _ask(uri: str, kind: str, settings: MilvusSettings, timeout: float) -> ServerInfo:
    import os

    from pymilvus import MilvusClient

    try:
        client = MilvusClient(uri=uri, token=os.environ.get(settings.token_env) or "", timeout=timeout)
        try:
            return ServerInfo.of(kind, str(client.get_server_version()))
        finally:
            client.close()
    except Exception as e:
        reason = re.sub(r"\s+", " ", getattr(e, "message", None) or str(e)).strip()
        raise ConfigError(f"milvus.uri = {uri!r}: cannot reach Milvus to check what it can hold ({reason}); start "
                          "it or fix milvus.uri / milvus.token_env before embedding — nothing has been sent yet") from None


@dataclass(frozen=True)
class Layout:
    """Where each carried column goes: ``typed`` fields (declared nullable when ``nullable``) or ``dynamic``
    keys of the dynamic field (a null is an absent key)."""

    typed: tuple[str, ...]
    dynamic: tuple[str, ...]
    nullable: bool

    def describe(self, column: str) -> str:
        if column in self.dynamic:
            return "key of the dynamic field (a null is an absent key)"
        return "nullable field" if self.nullable else "field"


def choose_layout(nulls: dict[str, int], info: ServerInfo) -> Layout:
    """``nulls``: carried column → how many nulls it holds (in column order)."""
    names = tuple(nulls)
    if info.nullable:
        return Layout(names, (), True)
    return Layout(tuple(n for n in names if not nulls[n]), tuple(n for n in names if nulls[n]), False)


def fill_mode(settings: MilvusSettings, info: ServerInfo, layout: Layout | None,
              output: str | None = None) -> tuple[str, str | None]:
    """How the load fills the collection — ``BULK``, ``BULK_COPIES`` (import copies with ``$meta``, for
    dynamic-field columns) or ``INSERT`` — and a note when it inserts where bulk import was the default.
    ConfigError where ``milvus.mode`` asks for what cannot work. ``layout`` None: nulls not known yet.
    ``output``: ``output.path``, to check that the server can be given the files (``load.importfiles``)."""
    from .importfiles import placement

    mode = settings.mode
    if mode == "bulk" and info.kind == "lite":
        raise ConfigError(f"milvus.mode = \"bulk\" needs a Milvus server; Milvus Lite ({settings.uri}) has no import "
                          "API — use mode = \"auto\" or \"insert\"")
    if mode == "insert" or info.kind == "lite":
        return INSERT, None
    if output is not None and placement(settings, output) is None:
        why = (f"output.path {output} is on object storage and the Milvus server at {settings.uri} imports files "
               "from its own local disk (milvus.bucket is not set)")
        if mode == "bulk":
            raise ConfigError(f"milvus.mode = \"bulk\": {why}; set milvus.bucket to the bucket of the server's "
                              "MinIO/S3 storage (the load then copies the shards there), or use mode = \"auto\"")
        return INSERT, f"{why}: the load inserts instead of bulk import"
    if layout is None or not layout.dynamic:
        return BULK, None
    return BULK_COPIES, None

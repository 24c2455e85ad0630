"""An append-only log of JSON lines kept as a series of objects, for stores that have no append and no rename.

Object storage cannot append to an object or rename one, so a log that grows while a job runs is written as
new objects under one prefix (``_progress/``, ``_timeseries/``)::

    c-00000013.jsonl            a chunk: the records buffered since the last flush, written once
    s-00000001-00000256.jsonl   a segment: chunks 1..256 merged into one object (compaction)

Sequence numbers are global across runs of the same output (a writer starts after the highest one it finds),
so the log reads in write order: the segments and chunks that no wider segment covers, by sequence number.
Compaction writes the merged segment first and deletes what it covers after, so a reader (or a writer after
a crash in between) that sees both reads the segment and skips what it covers — nothing is read twice or lost.
``compact()`` merges this writer's loose chunks; ``compact(everything=True)`` merges every object into one
(at the end of a run), so a long run leaves a handful of objects, not thousands.
"""
from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass
from typing import Any, Iterator

from ..errors import StorageError
from ..storage import Storage

__all__ = ["ChunkLog", "LogObject", "scan"]

_NAME = re.compile(r"^(?:c-(\d{8,})|s-(\d{8,})-(\d{8,}))\.jsonl$")


@dataclass(frozen=True)
class LogObject:
    """One object of a log: a chunk (``lo == hi``) or a segment covering chunks ``lo..hi``."""

    path: str  # under the output root
    lo: int
    hi: int  # a chunk has lo == hi

    @property
    def is_segment(self) -> bool:
        return self.path.rsplit("/", 1)[-1].startswith("s-")


def _dumps(rec: dict[str, Any]) -> str:
    return json.dumps(rec, separators=(",", ":"), sort_keys=True, default=str)


def scan(out: Storage, prefix: str) -> tuple[list[LogObject], list[LogObject]]:
    """(live objects in sequence order, superseded ones) under ``prefix``: one listing."""
    found = []
    for f in out.list(prefix, recursive=False):
        m = _NAME.match(posixpath.basename(f.path))
        if m:
            lo, hi = (int(m[1]), int(m[1])) if m[1] else (int(m[2]), int(m[3]))
            found.append(LogObject(f.path, lo, hi))
    found.sort(key=lambda o: (o.lo, -o.hi, not o.is_segment))
    live: list[LogObject] = []
    dead: list[LogObject] = []
    for o in found:  # widest first at each start: anything inside the last live object is superseded
        if live and o.hi <= live[-1].hi:
            dead.append(o)
        else:
            live.append(o)
    return live, dead


def _read_objects(out: Storage, prefix: str) -> list[tuple[LogObject, bytes]]:
    """Every live object's bytes; re-lists if a compaction deleted one between listing and reading."""
    for attempt in range(3):
        live, _ = scan(out, prefix)
        got = []
        for o in live:
            data = out.read_bytes(o.path)
            if data is None:
                break
            got.append((o, data))
        else:
            return got
    raise StorageError(f"{out.uri_of(prefix)}: log objects kept disappearing while being read")


def _lines(data: bytes) -> Iterator[dict[str, Any]]:
    for line in data.splitlines():
        if line.strip():
            yield json.loads(line)


class ChunkLog:
    """One writer's side of the log. ``append`` only buffers; ``flush`` writes the buffer as one new chunk."""

    def __init__(self, out: Storage, prefix: str, *, compact_every: int = 256):
        self.out, self.prefix, self.compact_every = out, prefix.strip("/"), max(2, compact_every)
        self._buf: list[str] = []
        self._loose: list[tuple[LogObject, bytes]] = []  # this writer's chunks not yet in a segment
        self._older: list[LogObject] = []  # loose chunks an earlier run left
        self._next = 1
        self.objects_written = 0

    # -- writing ---------------------------------------------------------------------------------
    def open(self) -> "ChunkLog":
        """List the prefix once: continue numbering after what is there, remove what a crash left superseded."""
        live, dead = scan(self.out, self.prefix)
        self._next = max((o.hi for o in live), default=0) + 1
        self._older = [o for o in live if not o.is_segment]
        if dead:
            self.out.delete_many([o.path for o in dead])
        return self

    def append(self, rec: dict[str, Any]) -> None:
        self._buf.append(_dumps(rec))

    @property
    def pending(self) -> int:
        return len(self._buf)

    def flush(self) -> bool:
        """Write buffered records as one chunk (nothing if none); compact when enough chunks are loose.
        On a storage error the records stay buffered for the next flush and the error is raised."""
        if not self._buf:
            return False
        seq = self._next
        obj = LogObject(f"{self.prefix}/c-{seq:08d}.jsonl", seq, seq)
        data = ("\n".join(self._buf) + "\n").encode()
        self.out.write_bytes(obj.path, data)
        self._next += 1
        self.objects_written += 1
        self._buf.clear()
        self._loose.append((obj, data))
        if len(self._loose) + len(self._older) >= self.compact_every:
            self.compact()
        return True

    def compact(self, everything: bool = False) -> LogObject | None:
        """Merge loose chunks (every object with ``everything``) into one segment; None if nothing to merge."""
        if everything:
            parts = _read_objects(self.out, self.prefix)
        else:
            parts = [(o, d) for o in self._older if (d := self.out.read_bytes(o.path)) is not None] + self._loose
            parts.sort(key=lambda p: p[0].lo)
        if len(parts) < 2:
            self._older, self._loose = [], []
            return None
        lo, hi = parts[0][0].lo, parts[-1][0].hi
        seg = LogObject(f"{self.prefix}/s-{lo:08d}-{hi:08d}.jsonl", lo, hi)
        self.out.write_bytes(seg.path, b"".join(d if d.endswith(b"\n") else d + b"\n" for _, d in parts))
        self.objects_written += 1
        self.out.delete_many([o.path for o, _ in parts if o.path != seg.path])
        self._older, self._loose = [], []
        return seg

    # -- reading ---------------------------------------------------------------------------------
    @staticmethod
    def read(out: Storage, prefix: str) -> Iterator[dict[str, Any]]:
        """Every record in write order (flushed ones: a live writer's buffer is not there yet)."""
        for _, data in _read_objects(out, prefix.strip("/")):
            yield from _lines(data)

    @staticmethod
    def read_last(out: Storage, prefix: str, n: int = 1) -> list[dict[str, Any]]:
        """The last ``n`` records from the newest objects only (cheap for a status look)."""
        live, _ = scan(out, prefix.strip("/"))
        got: list[dict[str, Any]] = []
        for o in reversed(live):
            data = out.read_bytes(o.path)
            if data is None:
                continue
            got = list(_lines(data)) + got
            if len(got) >= n:
                break
        return got[-n:]

    @staticmethod
    def count(out: Storage, prefix: str) -> int:
        """Objects under the prefix (live or superseded): what compaction keeps bounded."""
        live, dead = scan(out, prefix.strip("/"))
        return len(live) + len(dead)

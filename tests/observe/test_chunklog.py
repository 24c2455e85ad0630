"""ChunkLog: an append-only JSON-lines log as new objects (no append, no rename), compacted now and then.

On a local folder here; tests/embed/test_runlog.py runs the same log on a real S3 server."""
from __future__ import annotations

import pytest

from jinabatch.observe.chunklog import ChunkLog, scan
from jinabatch.storage import Storage


@pytest.fixture
def out(tmp_path):
    return Storage.open(tmp_path / "out")


def _write(log: ChunkLog, start: int, n: int, per_flush: int = 3) -> None:
    for i in range(start, start + n):
        log.append({"i": i})
        if (i + 1) % per_flush == 0:
            log.flush()
    log.flush()


def test_records_read_back_once_each_in_write_order_across_flushes_and_compactions(out):
    log = ChunkLog(out, "_p", compact_every=4).open()
    _write(log, 0, 100)
    assert [r["i"] for r in ChunkLog.read(out, "_p")] == list(range(100))
    log.compact(everything=True)
    assert [r["i"] for r in ChunkLog.read(out, "_p")] == list(range(100))
    assert ChunkLog.count(out, "_p") == 1


def test_object_count_stays_bounded_while_writing_and_ends_as_one_object(out):
    """1,000 flushes with compaction every 16 chunks: never more than 16 loose chunks plus one segment per 16."""
    log = ChunkLog(out, "_p", compact_every=16).open()
    worst = 0
    for i in range(1000):
        log.append({"i": i})
        log.flush()
        live, dead = scan(out, "_p")
        assert not dead
        assert sum(1 for o in live if not o.is_segment) < 16
        worst = max(worst, len(live))
    assert worst <= 16 + 1000 // 16
    log.compact(everything=True)
    assert ChunkLog.count(out, "_p") == 1
    assert [r["i"] for r in ChunkLog.read(out, "_p")] == list(range(1000))


def test_a_second_writer_continues_the_numbering_after_the_first(out):
    """A resumed run appends after what an earlier (crashed) run left, loose chunks included."""
    first = ChunkLog(out, "_p", compact_every=5).open()
    _write(first, 0, 20)  # leaves a segment and loose chunks (no final compaction: the driver died)
    second = ChunkLog(out, "_p", compact_every=5).open()
    _write(second, 20, 20)
    assert [r["i"] for r in ChunkLog.read(out, "_p")] == list(range(40))
    second.compact(everything=True)
    assert [r["i"] for r in ChunkLog.read(out, "_p")] == list(range(40))


def test_crash_between_writing_a_segment_and_deleting_its_chunks_reads_each_record_once(out, monkeypatch):
    log = ChunkLog(out, "_p", compact_every=1000).open()
    _write(log, 0, 12)
    monkeypatch.setattr(out, "delete_many", lambda subs: None)  # the driver dies right after the segment PUT
    log.compact()
    monkeypatch.undo()
    live, dead = scan(out, "_p")
    assert len(live) == 1 and live[0].is_segment and len(dead) == 4
    assert [r["i"] for r in ChunkLog.read(out, "_p")] == list(range(12))
    ChunkLog(out, "_p").open()  # the next writer removes what the segment covers
    assert ChunkLog.count(out, "_p") == 1


def test_a_failed_write_keeps_the_records_for_the_next_flush(out, monkeypatch):
    from jinabatch.errors import StorageError

    log = ChunkLog(out, "_p").open()
    log.append({"i": 0})

    def fail(sub, data):
        raise StorageError("down")

    monkeypatch.setattr(out, "write_bytes", fail)
    with pytest.raises(StorageError):
        log.flush()
    monkeypatch.undo()
    log.append({"i": 1})
    log.flush()
    assert [r["i"] for r in ChunkLog.read(out, "_p")] == [0, 1]


def test_read_last_reads_only_the_newest_objects(out):
    log = ChunkLog(out, "_p", compact_every=1000).open()
    _write(log, 0, 30)
    reads = []
    orig = out.read_bytes
    out.read_bytes = lambda sub: reads.append(sub) or orig(sub)
    assert [r["i"] for r in ChunkLog.read_last(out, "_p", 2)] == [28, 29]
    assert len(reads) == 1

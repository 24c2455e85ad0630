"""RunLog: the driver's bookkeeping at O(1) work and I/O per finished shard, on a fake clock (no sleeping).

Driven as the driver drives it (tests/runlog_sim.py); the real-Ray run is in test_watch_run.py."""
from __future__ import annotations

import json

import pytest

from runlog_sim import T0, Clock, simulate
from jinabatch.observe.chunklog import ChunkLog
from jinabatch.observe.records import MANIFEST, PROGRESS, TIMESERIES, read_progress, read_timeseries
from jinabatch.observe.runlog import RunLog
from jinabatch.storage import Storage


def _counting(out: Storage) -> list[str]:
    writes: list[str] = []
    orig = out.write_bytes
    out.write_bytes = lambda sub, data: (writes.append(sub), orig(sub, data))[1]
    return writes


@pytest.fixture
def out(tmp_path):
    return Storage.open(tmp_path / "out")


def test_finishing_shards_writes_nothing_until_the_flush_is_due_then_one_chunk_per_log(out):
    """2,000 shards finishing inside one flush window cost no I/O; the next due tick writes one object per log."""
    clock = Clock()
    rl = RunLog(out, {"plan": {"shards_total": 2000}}, clock=clock, flush_seconds=5, manifest_seconds=10)
    rl.start([])
    writes = _counting(out)
    for s in range(2000):
        rl.shard_started(s, f"shard-{s:05d}")
        rl.shard_finished({"shard": s, "name": f"shard-{s:05d}", "status": "done", "rows_in": 1, "rows_embedded": 1,
                           "rows_dead_letter": 0, "tokens": 3})
        rl.tick({"rows": s + 1, "tokens": 3 * (s + 1)}, {}, 1)
    assert writes == []
    clock.t += 5
    rl.tick({"rows": 2000, "tokens": 6000}, {}, 0)
    assert sorted(w.split("/")[0] for w in writes) == [PROGRESS, TIMESERIES]
    clock.t += 5
    rl.tick({"rows": 2000, "tokens": 6000}, {}, 0)
    assert writes[2:] == [f"{TIMESERIES}/c-00000003.jsonl", MANIFEST]  # no empty progress chunk
    assert len(RunLog.read_done(out)) == 2000


def test_a_long_run_keeps_objects_bounded_and_the_manifest_small(out):
    """3,000 shards over ~2 simulated hours: logs compacted as they grow, one object each at the end, and
    the manifest stays the same small size whatever the shard count."""
    sim = simulate(out, 3000, rows=10, seconds=10.0, workers=4, compact_every=32)
    sizes, worst, step = {}, 0, 0
    while len(sim.done) < 3000:
        sim.step()
        step += 1
        if step % 10 == 0:
            worst = max(worst, ChunkLog.count(out, PROGRESS), ChunkLog.count(out, TIMESERIES))
        if len(sim.done) % 500 == 0 and len(sim.done) not in sizes and len(sim.done) > 0:
            sizes[len(sim.done)] = len(json.dumps(out.read_json(MANIFEST)))
    hours = (sim.clock.t - T0) / 3600
    assert hours > 2 and worst <= 32 + (hours * 3600 / 5) // 32 + 1
    sim.runlog.finish(sim.report(), "finished")
    assert ChunkLog.count(out, PROGRESS) == ChunkLog.count(out, TIMESERIES) == 1
    assert len(sizes) >= 5 and max(sizes.values()) < 4000 and max(sizes.values()) - min(sizes.values()) < 100
    assert len(read_progress(out)) == 3000


def test_manifest_counts_shards_rows_and_recent_rates_while_running(out):
    sim = simulate(out, 40, rows=100, seconds=10.0, workers=4, skipped=4, fail={9}, manifest_seconds=0.5)
    sim.run(until_done=16)
    for _ in range(5):
        sim.step()
    m = out.read_json(MANIFEST)
    assert m["state"] == "running" and m["fingerprint"] == "f" * 16
    assert m["shards"] == {"total": 40, "done": 15, "skipped": 4, "running": 4, "failed": 1, "pending": 16}
    assert m["rows"]["skipped"] == 400 and m["rows"]["so_far"] == 400 + sim.totals["rows"]
    assert m["rows"]["embedded"] == 4 * 100 + 15 * 99 and m["rows"]["dead_letter"] == 15
    # 4 workers × 100 rows × 50 tokens per 10 s = 120,000 tokens/min while all four run
    assert m["rate"]["tokens_per_min"] == pytest.approx(120_000, rel=0.1) and m["rate"]["window_s"] >= 40
    assert [r["name"] for r in m["running"]] == sorted(r["name"] for r in m["running"]) and len(m["running"]) == 4
    assert m["failures"] == [{"shard": "shard-00009", "error": "boom"}]
    assert m["price_per_million_tokens"] == 0.02 and m["limits"]["tpm"] == 600_000


def test_read_done_gives_each_shards_latest_done_record_and_never_a_failed_one(out):
    sim = simulate(out, 12, fail={3, 5})
    sim.run()
    sim.runlog.finish(sim.report(), "failed")
    done = RunLog.read_done(out)
    assert sorted(done) == [s for s in range(12) if s not in (3, 5)]
    assert done[0]["rows_embedded"] == 99 and done[0]["status"] == "done" and done[0]["lane"] in range(4)
    # a resumed run: shard 0..9 but 3 and 5 skipped, those two now succeed
    again = simulate(out, 12, skipped=0, clock=Clock(T0 + 3600))
    again.queue = [3, 5]
    again.runlog.counts["skipped"] = 10
    again.run(until_done=2)
    again.runlog.finish(again.report(), "finished")
    done = RunLog.read_done(out)
    assert sorted(done) == list(range(12)) and done[3]["run"] == again.runlog.run != done[0]["run"]


def test_time_series_ends_at_the_reported_totals_and_differences_add_up(out):
    sim = simulate(out, 20, sample_seconds=5.0)
    sim.run()
    sim.runlog.finish(sim.report(), "finished")
    samples = read_timeseries(out, sim.runlog.run)
    assert all(b["t"] - a["t"] >= 5.0 or b is samples[-1] for a, b in zip(samples, samples[1:]))
    for k in ("tokens", "requests", "rows", "http_429", "retries"):
        assert samples[-1][k] == sim.totals[k] and samples[0][k] == 0
        assert sum(b[k] - a[k] for a, b in zip(samples, samples[1:])) == sim.totals[k]
    assert samples[-1]["workers"] == 0 and max(s["workers"] for s in samples) == 4


def test_finish_takes_the_billed_totals_even_if_the_last_tick_missed_them(out):
    sim = simulate(out, 4)
    sim.run()
    rep = sim.report() | {"tokens": sim.totals["tokens"] + 77, "requests": sim.totals["requests"] + 1}
    sim.runlog.finish(rep, "finished")
    last = read_timeseries(out)[-1]
    assert (last["tokens"], last["requests"]) == (rep["tokens"], rep["requests"])
    assert out.read_json(MANIFEST)["state"] == "finished" and out.read_json(MANIFEST)["tokens"] == rep["tokens"]


def test_pooled_keys_are_sampled_per_key_by_name_only(out):
    sim = simulate(out, 8, keys=2)
    sim.run()
    sim.runlog.finish(sim.report(), "finished")
    last = read_timeseries(out)[-1]
    assert set(last["keys"]) == {"key0", "key1"}
    assert sum(k["tokens"] for k in last["keys"].values()) == sim.totals["tokens"]
    assert {r["key"] for r in read_progress(out)} == {"key0", "key1"}


def test_a_storage_error_mid_run_is_retried_at_the_next_flush_and_loses_nothing(out, monkeypatch):
    from jinabatch.errors import StorageError

    sim = simulate(out, 10)
    orig = out.write_bytes

    def down(sub, data):
        raise StorageError("s3 down")

    monkeypatch.setattr(out, "write_bytes", down)
    sim.run(until_done=5)  # every flush fails: the run goes on
    monkeypatch.setattr(out, "write_bytes", orig)
    sim.run()
    sim.runlog.finish(sim.report(), "finished")
    assert sorted(RunLog.read_done(out)) == list(range(10))


def test_an_exception_in_the_driver_ends_the_manifest_as_failed_and_goes_on_up(out):
    sim = simulate(out, 10)
    sim.run(until_done=4)
    with pytest.raises(KeyboardInterrupt):
        with sim.runlog.failing(sim.report):
            raise KeyboardInterrupt
    m = out.read_json(MANIFEST)
    assert m["state"] == "failed" and m["shards"]["done"] == 4 and len(RunLog.read_done(out)) == 4

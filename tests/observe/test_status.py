"""Status of a run from what it writes: in progress, finished, stale, on a folder and on S3 (SeaweedFS),
through the library and through `python jobs/status.py` in another process (as from another machine)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runlog_sim import Clock, simulate
from jinabatch.observe.records import MANIFEST
from jinabatch.observe.status import STALE_AFTER_S, format_status, read_status
from jinabatch.storage import Storage

REPO = Path(__file__).resolve().parents[2]


def _status_job(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "jobs" / "status.py"), *args], capture_output=True, text=True,
                          timeout=timeout)


def _running(out: Storage) -> object:
    """40 shards of 100 rows, 4 workers, 10 s each, 4 done before: stopped after 16 finished this run."""
    sim = simulate(out, 40, clock=Clock(time.time()), skipped=4, fail={9}, manifest_seconds=0.5)
    sim.run(until_done=16)
    for _ in range(5):
        sim.step()
    return sim


def test_status_of_a_run_in_progress_shows_counts_rate_against_tpm_eta_and_spend(tmp_path):
    out = Storage.open(tmp_path / "out")
    sim = _running(out)
    st = read_status(out, now=sim.clock.t)
    assert st["state"] == "running" and not st["stale"]
    assert st["shards"] == {"total": 40, "done": 15, "skipped": 4, "running": 4, "failed": 1, "pending": 16}
    assert st["tokens"] == sim.totals["tokens"] and st["requests"] == sim.totals["requests"]
    assert st["rate"]["tokens_per_min"] == pytest.approx(120_000, rel=0.1) and st["rate"]["tpm_limit"] == 600_000
    # 40 rows/s while 4 shards of 100 rows run for 10 s; rows left = 4,000 − 400 skipped − rows processed
    left = 4000 - 400 - sim.totals["rows"]
    assert st["rows_left"] == left and st["eta_s"] == pytest.approx(left / 40, rel=0.1)
    assert st["spend_usd"] == pytest.approx(sim.totals["tokens"] * 0.02 / 1e6)
    text = format_status(st, now=sim.clock.t)
    assert "shards   15 done, 4 skipped, 4 running, 1 failed, 16 pending of 40" in text
    assert "= 20.0% of TPM 600,000" in text and "ETA      " in text and "spend    $" in text
    assert "failed   shard-00009: boom" in text and text.count("running  shard-") == 4


def test_a_running_manifest_that_stopped_updating_is_flagged_as_a_stopped_driver(tmp_path):
    out = Storage.open(tmp_path / "out")
    sim = _running(out)  # the driver "dies" here: nothing more is written
    later = out.read_json(MANIFEST)["updated_ts"] + STALE_AFTER_S + 1
    st = read_status(out, now=later)
    assert st["stale"] and "the driver may have stopped" in format_status(st, now=later)
    assert st["eta_s"] is None or st["eta_s"] < read_status(out, now=sim.clock.t)["eta_s"]


def test_status_of_a_finished_run_shows_the_result_and_its_cost(tmp_path):
    out = Storage.open(tmp_path / "out")
    sim = simulate(out, 8, clock=Clock(time.time()))
    sim.run()
    rep = sim.report()
    out.write_json("_report.json", rep)
    sim.runlog.finish(rep, "finished")
    p = _status_job(str(tmp_path / "out"))
    assert p.returncode == 0, p.stderr
    assert ": finished" in p.stdout and "8 done, 0 skipped, 0 running, 0 failed, 0 pending of 8" in p.stdout
    assert f"result   {rep['rows_embedded']:,}/{rep['rows_in']:,} rows embedded" in p.stdout
    assert f"spend    ${rep['tokens'] * 0.02 / 1e6:,.4f}" in p.stdout and "ETA" not in p.stdout
    st = json.loads(_status_job(str(tmp_path / "out"), "--json").stdout)
    assert st["state"] == "finished" and st["tokens"] == rep["tokens"] and st["report"]["rows_in"] == rep["rows_in"]


def test_status_job_without_a_run_there_exits_1_with_one_line(tmp_path):
    p = _status_job(str(tmp_path / "nothing"))
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and "no _manifest.json" in p.stderr


def test_watch_refreshes_until_the_run_finishes(tmp_path):
    out = Storage.open(tmp_path / "out")
    sim = _running(out)
    proc = subprocess.Popen([sys.executable, str(REPO / "jobs" / "status.py"), str(tmp_path / "out"), "--json",
                             "--watch", "0.2"], stdout=subprocess.PIPE, text=True)
    try:
        first = json.loads(proc.stdout.readline())
        assert first["state"] == "running"
        sim.run()
        sim.runlog.finish(sim.report(), "finished")
        rest = proc.communicate(timeout=60)[0].splitlines()
    finally:
        proc.kill()
    assert proc.returncode == 0 and json.loads(rest[-1])["state"] == "finished"
    assert all(json.loads(line)["state"] in ("running", "finished") for line in rest)


@pytest.mark.slow
def test_on_s3_the_logs_manifest_status_and_html_live_in_the_bucket(s3_bucket):
    """A run on s3:// (SeaweedFS): chunk objects, compaction, read back from another process by URI."""
    from jinabatch.observe.chunklog import ChunkLog
    from jinabatch.observe.records import PROGRESS, TIMESERIES
    from jinabatch.observe.runlog import RunLog

    uri = f"s3://{s3_bucket()}/runs/one"
    out = Storage.open(uri)
    sim = simulate(out, 60, clock=Clock(time.time()), rows=20, seconds=2.0, compact_every=4, manifest_seconds=0.5)
    sim.run(until_done=30)
    assert ChunkLog.count(out, PROGRESS) <= 4 + 30  # compacted as it goes
    p = _status_job(uri, "--json")
    assert p.returncode == 0, p.stderr
    st = json.loads(p.stdout)
    assert st["state"] == "running" and st["output"] == uri and st["shards"]["done"] + st["shards"]["running"] >= 30
    sim.run()
    rep = sim.report()
    out.write_json("_report.json", rep)
    sim.runlog.finish(rep, "finished")
    assert ChunkLog.count(out, PROGRESS) == ChunkLog.count(out, TIMESERIES) == 1
    assert sorted(RunLog.read_done(Storage.open(uri))) == list(range(60))
    assert ": finished" in _status_job(uri).stdout
    page = out.read_bytes("_report.html")
    assert page and b'id="jb-charts"' in page and b"chart-timeline" in page

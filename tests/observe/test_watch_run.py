"""Watching a real run (real local Ray, real HTTP to the local server): the time series adds up to the report
and to what the server counted, status from another process while it runs and after, progress lines in a log
with no terminal, and the report page."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from corpus_gen import make_corpus
from fixtures_ray import KEY_ENV, base_config
from jinabatch.embed.driver import run_embed
from jinabatch.observe.records import read_progress, read_timeseries
from jinabatch.observe.runlog import RunLog
from jinabatch.jina.probe import PROBE_TEXT
from jinabatch.local_api import fakemodel
from jinabatch.observe.status import read_status
from jinabatch.storage import Storage
from test_report_html import EXTERNAL, chart_specs, chart_values

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def test_time_series_and_shard_log_add_up_to_the_report_and_the_servers_count(ray_local, embed_config,
                                                                              make_jina_server, tmp_path):
    make_corpus(tmp_path / "corpus", files=2, rows_per_file=300, row_group_size=100)
    srv = make_jina_server(latency_ms=100)
    out = tmp_path / "out"
    cfg = embed_config(tmp_path / "corpus", out, srv.url, corpus={"rows_per_shard": 100},
                       jina={"max_inputs_per_request": 25, "price_per_million_tokens": 0.05})
    rep = run_embed(cfg, progress=False)
    served = srv.stats()
    store = Storage.open(out)
    manifest = json.loads((out / "_manifest.json").read_text())
    samples = read_timeseries(store, manifest["run"])
    assert len(samples) >= 2 and samples[0]["tokens"] == 0
    last = samples[-1]
    assert (last["tokens"], last["requests"], last["rows"]) == (rep.tokens, rep.requests, rep.rows_in)
    assert (rep.tokens, rep.requests) == (served["tokens"], served["requests"])
    for k in ("tokens", "requests", "rows"):
        assert all(b[k] >= a[k] for a, b in zip(samples, samples[1:])), f"{k} went down"
    shards = read_progress(store, manifest["run"])
    assert len(shards) == rep.shards_done == 6 and all(s["status"] == "done" and s["node"] for s in shards)
    probe = fakemodel.count_tokens(PROBE_TEXT)  # the endpoint check before the run is on the bill too
    assert sum(s["tokens"] for s in shards) + probe == rep.tokens and sum(s["rows_in"] for s in shards) == rep.rows_in
    assert all(s["started"] <= s["finished"] for s in shards) and {s["key"] for s in shards} == {"key0"}
    assert sorted(RunLog.read_done(store)) == list(range(6))
    assert manifest["state"] == "finished" and manifest["shards"]["done"] == 6 and manifest["tokens"] == rep.tokens
    st = read_status(store)
    assert st["state"] == "finished" and st["spend_usd"] == pytest.approx(rep.tokens * 0.05 / 1e6)
    page = (out / "_report.html").read_text()
    assert not EXTERNAL.findall(page)
    series = [r for r in chart_values(chart_specs(page)["tokens"]) if "tokens" in r]
    assert sum(r["tokens"] for r in series) == rep.tokens and sum(r["requests"] for r in series) == rep.requests
    assert len(chart_values(chart_specs(page)["timeline"])) == 6


def _toml(data: dict) -> str:
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)
    return "\n".join(f"[{s}]\n" + "\n".join(f"{k} = {value(v)}" for k, v in vals.items()) + "\n"
                     for s, vals in data.items())


def test_a_job_in_a_log_prints_progress_lines_and_status_follows_it_from_another_process(make_jina_server, jina_key,
                                                                                        tmp_path):
    """jobs/embed.py with no terminal: progress lines (no carriage return) while status.py, another process,
    sees it running with rows so far and then finished; the job says where the report is."""
    make_corpus(tmp_path / "corpus", files=2, rows_per_file=400, row_group_size=100)
    srv = make_jina_server(latency_ms=150)
    out = tmp_path / "out"
    # ~24k tokens at 90k TPM: ~16 s of embedding, so the 10 s manifest snapshot is rewritten mid-run
    data = base_config(tmp_path / "corpus", out, srv.url, corpus={"rows_per_shard": 100},
                       jina={"max_inputs_per_request": 20}, limits={"rpm": 6000, "tpm": 90_000, "concurrency": 8})
    (tmp_path / "cfg.toml").write_text(_toml(data))
    env = dict(os.environ, **{KEY_ENV: jina_key, "RAY_AUTH_MODE": "disabled", "JINABATCH_PROGRESS_SECONDS": "1"})
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen([sys.executable, str(REPO / "jobs" / "embed.py"), str(tmp_path / "cfg.toml")], env=env,
                            stdout=subprocess.PIPE, stderr=open(tmp_path / "stderr.log", "w"), text=True)
    seen_running = None
    try:
        deadline = time.monotonic() + 180
        while proc.poll() is None and time.monotonic() < deadline:
            p = subprocess.run([sys.executable, str(REPO / "jobs" / "status.py"), str(out), "--json"],
                               capture_output=True, text=True, timeout=60)
            if p.returncode == 0:
                st = json.loads(p.stdout)
                if st["state"] == "running" and st["rows"].get("so_far", 0) > 0:
                    seen_running = st
                    break
            time.sleep(0.2)
        stdout = proc.communicate(timeout=300)[0]
    finally:
        proc.kill()
    err = (tmp_path / "stderr.log").read_text()
    assert proc.returncode == 0, err[-3000:]
    assert seen_running, "status never saw the run in progress"
    assert seen_running["shards"]["total"] == 8 and seen_running["rate"]["tpm_limit"] == data["limits"]["tpm"]
    lines = [ln for ln in err.splitlines() if ln.startswith("embed: ")]
    assert "\r" not in err and len(lines) >= 2, err[-3000:]
    assert re.match(r"embed: [\d,]+/800 rows \([\d.]+%\), \d/8 shards, [\d,]+ tokens/min = [\d.]+% of TPM", lines[0])
    assert lines[-1].startswith("embed: 800/800 rows (100.0%), 8/8 shards") and "took" in lines[-1]
    assert f"report: {out}/_report.html" in stdout and (out / "_report.html").exists()
    p = subprocess.run([sys.executable, str(REPO / "jobs" / "status.py"), str(out)], capture_output=True, text=True,
                       timeout=60)
    assert ": finished" in p.stdout and "8 done, 0 skipped, 0 running, 0 failed, 0 pending of 8" in p.stdout

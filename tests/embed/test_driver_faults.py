"""The embed stage when things go wrong: killed workers, a killed driver, faulty servers, rate limits, bad rows.

All over real HTTP to the local server and a real local Ray. The guarantee checked every time: each input id
ends up exactly once — in a shard with its own text's exact vector, or in the dead letters with a reason —
and nothing half-written survives.
"""
from __future__ import annotations

import json

import subprocess
import sys
from pathlib import Path

import pytest

from corpus_gen import assert_vectors_match, make_corpus, read_dead_letters, read_output, write_rows
from fixtures_ray import KEY_ENV, base_config
from procs import job_env, kill_when, run_killing_one_worker, toml_of
from jinabatch.local_api import fakemodel
from jinabatch.config import parse_config
from jinabatch.embed.plan import plan_corpus
from jinabatch.embed.driver import run_embed
from jinabatch.errors import AuthError
from jinabatch.jina.probe import PROBE_TEXT
from jinabatch.local_api.server import LocalServer, ServerSettings
from jinabatch.storage import Storage

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def _assert_complete(out: Path, corpus) -> None:
    table = read_output(out)
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)), "an id was written twice"
    assert sorted(ids) == sorted(corpus.ids), "rows are missing from the output"
    assert_vectors_match(table, {r["id"]: r["text"] for r in corpus.rows})
    assert not list(out.rglob("*.tmp-*")), "a temp file survived"


_toml, _job_env = toml_of, job_env


# -- faults on the wire --------------------------------------------------------------------------

@pytest.mark.parametrize("faults, extra", [
    (("json500", "html502", "drop"), {}),
    (("stall",), {"stall_seconds": 3.0}),
], ids=["5xx-and-drops", "stall"])
def test_server_faults_never_lose_or_corrupt_a_row(ray_local, embed_config, make_jina_server, jina_key, tmp_path,
                                                   faults, extra):
    """Every 5th request faults (500 JSON, 502 HTML, dropped connection, or a stall past read_timeout)."""
    corpus = make_corpus(tmp_path / "corpus", files=2, rows_per_file=300, row_group_size=100)
    srv = make_jina_server(fault_every=5, faults=faults, **extra)
    out = tmp_path / "out"
    cfg = embed_config(tmp_path / "corpus", out, srv.url,
                       jina={"max_inputs_per_request": 20, "read_timeout": 0.5, "max_attempts": 10})
    rep = run_embed(cfg, progress=False)
    st = srv.stats()
    assert st["faults"] >= 5 and set(st["faults_by_kind"]) == set(faults)
    assert rep.finished and rep.retries >= st["faults"] - 1  # a faulted attempt is retried, not dropped
    _assert_complete(out, corpus)
    # errors were logged by the workers: none of Ray's logs of this session holds the key
    logs = Path(ray_local._private.worker._global_node.get_logs_dir_path())
    assert any(f.stat().st_size for f in logs.glob("worker-*.err")), "no worker logs to check"
    leaked = [f for f in logs.rglob("*") if f.is_file() and jina_key.encode() in f.read_bytes()]
    assert leaked == [], f"the API key is in Ray's logs: {leaked}"


# -- rate limits ---------------------------------------------------------------------------------

@pytest.mark.parametrize("workers", [2, 4])
def test_shared_budget_keeps_429s_rare_and_concurrency_within_the_limit(ray_local, embed_config, make_jina_server,
                                                                        tmp_path, workers):
    """Server enforces the config's [limits] with a 2 s burst: few 429s, peak concurrency <= the limit."""
    # ~660-token requests at 6,000 tokens/s with 0.6 s latency would need ~5.4 in flight: all three limits bind
    limits = {"rpm": 1200, "tpm": 360_000, "concurrency": 4}
    corpus = make_corpus(tmp_path / "corpus", files=2, rows_per_file=600, row_group_size=100)
    srv = make_jina_server(**limits, burst_seconds=2.0, latency_ms=600)
    out = tmp_path / "out"
    cfg = embed_config(tmp_path / "corpus", out, srv.url, limits=limits, ray={"workers": workers},
                       corpus={"rows_per_shard": 200}, jina={"max_inputs_per_request": 32})
    rep = run_embed(cfg, progress=False)
    st = srv.stats()
    assert st["ok"] >= 30, "too few requests for the limits to mean anything"
    assert st["http_429"] <= max(1, st["requests"] // 100), st
    assert st["peak_concurrency"] <= limits["concurrency"]
    assert rep.http_429 == st["http_429"]
    _assert_complete(out, corpus)


# -- dead letters through the whole stage --------------------------------------------------------

def _bad_corpus(folder: Path) -> list[dict]:
    a = [{"id": i, "text": f"row {i} about walnut ember"} for i in range(30)]
    a += [{"id": None, "text": "no id"}, {"id": 300, "text": None}, {"id": 301, "text": ""},
          {"id": 302, "text": "hello " * 8333}]
    b = [{"id": i, "text": f"row {i} about velvet compass"} for i in range(100, 130)] + [{"id": 5, "text": "dup"}]
    write_rows(folder / "a.parquet", a, carried=False, row_group_size=10)
    write_rows(folder / "b.parquet", b, carried=False, row_group_size=10)
    return a + b


def test_dead_letters_reconcile_and_reasons_are_counted_in_the_report(ray_local, embed_config, jina_server, tmp_path):
    """Null id, null/empty text, cross-file duplicate, too long under skip: in = embedded + dead, by reason."""
    rows = _bad_corpus(tmp_path / "c")
    out = tmp_path / "out"
    rep = run_embed(embed_config(tmp_path / "c", out, jina_server.url, corpus={"columns": [], "rows_per_shard": 20},
                                 jina={"on_too_long": "skip"}), progress=False)
    assert (rep.rows_in, rep.rows_embedded, rep.rows_dead_letter) == (65, 60, 5) and rep.reconciled
    assert rep.dead_letter_reasons == {"null id": 1, "null text": 1, "empty text": 1, "too long": 1,
                                       "duplicate id": 1}
    dead = read_dead_letters(out)
    assert len(dead) == 5
    dup = [d for d in dead.to_pylist() if d["reason"].startswith("duplicate")]
    assert dup == [{"id": 5, "source_file": str((tmp_path / "c" / "b.parquet").resolve()), "row": 30,
                    "reason": "duplicate id (first at a.parquet row 5)", "text": "dup"}]
    table = read_output(out)
    assert sorted(table.column("id").to_pylist()) == list(range(30)) + list(range(100, 130))
    assert_vectors_match(table, {r["id"]: r["text"] for r in rows[:30] + rows[34:64]})


def test_resumed_report_still_counts_dead_letter_reasons(ray_local, embed_config, jina_server, tmp_path):
    """A rerun that skips every shard reports the same dead-letter reasons as the run that made them."""
    _bad_corpus(tmp_path / "c")
    cfg = embed_config(tmp_path / "c", tmp_path / "out", jina_server.url, corpus={"columns": []},
                       jina={"on_too_long": "skip"})
    first = run_embed(cfg, progress=False)
    again = run_embed(cfg, progress=False)
    assert again.shards_skipped == again.shards_total
    assert again.dead_letter_reasons == first.dead_letter_reasons


def test_fail_mode_exits_1_naming_id_and_file(tmp_path, jina_key):
    """on_too_long = fail through jobs/embed.py: exit code 1, the message names the row's id and file."""
    write_rows(tmp_path / "c" / "a.parquet", [{"id": i, "text": f"row {i}"} for i in range(20)] +
               [{"id": 4242, "text": "hello " * 8333}], carried=False)
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(_toml(base_config(tmp_path / "c", tmp_path / "out", "local", corpus={"columns": []},
                                     jina={"on_too_long": "fail"})))
    p = subprocess.run([sys.executable, str(REPO / "jobs" / "embed.py"), str(cfg), "--no-progress"],
                       env=_job_env(jina_key), capture_output=True, text=True, timeout=300)
    assert p.returncode == 1, p.stderr[-2000:]
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("error: BadRowError") and "4242" in last and "a.parquet" in last, last
    assert jina_key not in p.stdout + p.stderr
    assert not list((tmp_path / "out").glob("shards/*.parquet")), "the failed shard was written"


# -- killed processes ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def killed_worker_run(ray_local, jina_key, tmp_path_factory):
    """One embed run during which a shard's worker process is SIGKILLed once it is sending requests."""
    tmp = tmp_path_factory.mktemp("killed-worker")
    corpus = make_corpus(tmp / "corpus", files=2, rows_per_file=400, row_group_size=100)
    out = tmp / "out"
    with LocalServer(ServerSettings(api_keys=frozenset({jina_key}), latency_ms=100)) as srv, \
            pytest.MonkeyPatch.context() as mp:
        mp.setenv(KEY_ENV, jina_key)
        cfg = parse_config(base_config(tmp / "corpus", out, srv.url, corpus={"rows_per_shard": 400},
                                       jina={"max_inputs_per_request": 10}, limits={"concurrency": 4}))

        rep, killed = run_killing_one_worker(lambda: run_embed(cfg, progress=False), lambda: srv.stats()["ok"] >= 6)
        yield {"report": rep, "server": srv.stats(), "corpus": corpus, "out": out, "killed": killed}


def test_worker_killed_mid_shard_is_retried_and_every_row_is_written_once(killed_worker_run):
    """SIGKILL a worker while it embeds: Ray reruns the shard; ids exactly once, vectors exact, no temp file."""
    run = killed_worker_run
    assert run["killed"] and run["killed"][0].startswith("ray::embed shard-"), "no shard worker was killed"
    rep = run["report"]
    assert rep.finished and rep.shards_done == 2 and rep.rows_embedded == len(run["corpus"].rows)
    _assert_complete(run["out"], run["corpus"])


def test_report_never_counts_more_than_the_server_billed(killed_worker_run):
    """The report's tokens/requests are at most the server's. (Known gap, see the embed.py notes: the killed
    attempt's spend is left out entirely, so after a worker death the report under-counts.)"""
    rep, st = killed_worker_run["report"], killed_worker_run["server"]
    assert 0 < rep.tokens <= st["tokens"] and 0 < rep.requests <= st["requests"]


def test_driver_killed_then_rerun_sends_only_unfinished_shards(make_jina_server, jina_key, tmp_path):
    """SIGKILL jobs/embed.py after some shards exist; the rerun's tokens are exactly the unfinished shards'."""
    corpus = make_corpus(tmp_path / "corpus", files=2, rows_per_file=400, row_group_size=100)
    srv = make_jina_server(latency_ms=150)
    out = tmp_path / "out"
    data = base_config(tmp_path / "corpus", out, srv.url, corpus={"rows_per_shard": 100},
                       jina={"max_inputs_per_request": 20}, ray={"workers": 2})
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(_toml(data))
    cmd = [sys.executable, str(REPO / "jobs" / "embed.py"), str(cfg), "--no-progress"]
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(cmd, env=_job_env(jina_key), stdout=log, stderr=subprocess.STDOUT)
    shards_dir = out / "shards"
    try:
        kill_when(proc, lambda: len(list(shards_dir.glob("shard-*.parquet"))) >= 2,
                  lambda: (tmp_path / "first.log").read_text())
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()

    done = sorted(p.name for p in shards_dir.glob("shard-*.parquet"))
    plan = plan_corpus(parse_config(data), Storage.open(out))  # the run's own plan, kept in out/_plan
    unfinished = [s for s in plan.shards if f"{s.name}.parquet" not in done]
    assert 2 <= len(done) < len(plan.shards), f"kill came too late: {done}"
    text_of = {(r["_file"], r["_row"]): r["text"] for r in corpus.rows}
    want_tokens = sum(fakemodel.count_tokens(text_of[(Path(p.file).name, r)])
                      for s in unfinished for p in s.pieces for r in range(p.row_start, p.row_stop))
    want_tokens += fakemodel.count_tokens(PROBE_TEXT)  # the endpoint check before anything is scheduled

    srv.reset_stats()
    p = subprocess.run(cmd, env=_job_env(jina_key), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    st = srv.stats()
    assert st["tokens"] == want_tokens, f"rerun sent {st['tokens']} tokens; the unfinished shards hold {want_tokens}"
    _assert_complete(out, corpus)
    rep = json.loads((out / "_report.json").read_text())
    assert rep["shards_skipped"] == len(done) and rep["rows_embedded"] == len(corpus.rows) and rep["finished"]


def test_wrong_key_stops_the_run_with_auth_error_and_no_key_in_it(ray_local, embed_config, jina_server, tmp_path,
                                                                   monkeypatch):
    """A key the server refuses: AuthError from the check before anything is scheduled (one request, no shard
    written), naming the key's variable but not its value."""
    make_corpus(tmp_path / "corpus", files=2, rows_per_file=100, row_group_size=50)
    bad = "jina_WRONG_KEY_7d1e0c_should_not_appear"
    monkeypatch.setenv(KEY_ENV, bad)
    cfg = parse_config(base_config(tmp_path / "corpus", tmp_path / "out", jina_server.url))
    before = jina_server.stats()["requests"]
    with pytest.raises(AuthError) as e:
        run_embed(cfg, progress=False)
    assert bad not in str(e.value) and "key" in str(e.value).lower() and KEY_ENV in str(e.value)
    assert jina_server.stats()["requests"] == before + 1
    assert not list((tmp_path / "out").glob("shards/*.parquet"))
    assert not (tmp_path / "out" / "_report.json").exists()  # nothing ran, nothing to report

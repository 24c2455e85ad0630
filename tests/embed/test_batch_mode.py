"""The embed stage through Jina's Batch Embeddings API (``jina.api = "batch"``): real local Ray, real HTTP to the
local stand-in's batch endpoints. Vectors are checked row by row against ``fakemodel.embed``; the stand-in's
/stats say what was submitted, polled and billed."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from corpus_gen import CARRIED, assert_vectors_match, make_corpus, read_dead_letters, read_output, write_rows
from jinabatch.embed.driver import run_embed
from jinabatch.errors import BadRowError, BillingError
from jinabatch.observe.records import ShardBatches
from jinabatch.storage import Storage

pytestmark = pytest.mark.slow

NANO, TASK, DIMS = "jina-embeddings-v5-text-nano", "retrieval.passage", 64
FAST = {"poll_initial": 0.05, "poll_max": 0.2, "poll_jitter": 0.2}


def batch_config(embed_config, corpus_path, out, url, batch=None, jina=None, **sections):
    return embed_config(corpus_path, out, url, jina={"api": "batch", "model": NANO, "dimensions": DIMS,
                                                     "batch": {**FAST, **(batch or {})}, **(jina or {})}, **sections)


def server(make_jina_server, **knobs):
    return make_jina_server(**{"batch_queue_s": 0.05, "batch_processing_s": 0.1, "batch_processing_per_1000_s": 0.05,
                               **knobs})


def records(out: Path) -> list[ShardBatches]:
    st = Storage.open(out)
    return [ShardBatches.read(st, p.stem) for p in sorted((out / "_batches").glob("shard-*.json"))]


def embed_command(tmp_path: Path, out: Path, url: str) -> list[str]:
    """``jobs/embed.py`` on a batch-mode config (written under tmp_path) embedding tmp_path/corpus into ``out``."""
    import sys

    from fixtures_ray import base_config
    from procs import toml_of

    data = base_config(tmp_path / "corpus", out, url, corpus={"columns": []},
                       jina={"api": "batch", "model": NANO, "dimensions": DIMS})
    data["jina.batch"] = dict(FAST)
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(toml_of(data))
    return [sys.executable, str(Path(__file__).resolve().parents[2] / "jobs" / "embed.py"), str(cfg), "--no-progress"]


def one_shard_recorded(embed_config, make_jina_server, tmp_path: Path, entry):
    """A 200-row corpus planned as one shard whose batch record holds ``entry`` before the run (what an earlier run
    left); returns (stand-in, corpus, out, config)."""
    from jinabatch.embed.plan import plan_corpus

    srv = server(make_jina_server)
    corpus = make_corpus(tmp_path / "corpus", files=1, rows_per_file=200, row_group_size=100)
    out = tmp_path / "out"
    cfg = batch_config(embed_config, tmp_path / "corpus", out, srv.url, corpus={"columns": []})
    (shard,) = plan_corpus(cfg, Storage.open(out)).shards
    ShardBatches(shard=0, name=shard.name, shard_key=shard.key, fingerprint=cfg.fingerprint(),
                 batches=[entry]).write(Storage.open(out))
    return srv, corpus, out, cfg


def check_vectors(out: Path, rows: list[dict]) -> None:
    assert_vectors_match(read_output(out), {r["id"]: r["text"] for r in rows}, model=NANO, task=TASK, dims=DIMS)


def test_a_batch_run_writes_exact_vectors_from_shuffled_output_and_records_every_batch(
        ray_local, embed_config, make_jina_server, tmp_path, capsys):
    srv = server(make_jina_server, batch_shuffle=True)
    corpus = make_corpus(tmp_path / "corpus", files=2, rows_per_file=300, row_group_size=100)
    out = tmp_path / "out"
    cfg = batch_config(embed_config, tmp_path / "corpus", out, srv.url, batch={"inputs_per_batch": 150})
    rep = run_embed(cfg, progress="lines")
    lines = capsys.readouterr().err  # batches do not spend the key's TPM: no share of it, in progress or summary
    assert "embed: 600/600 rows" in lines and "of TPM" not in lines and "of TPM" not in rep.summary()
    stats = srv.stats()
    st = stats["batch"]
    check_vectors(out, corpus.rows)
    table = read_output(out)
    assert sorted(table.column("id").to_pylist()) == sorted(corpus.ids) and set(CARRIED) <= set(table.column_names)
    # 600 rows, 200 per shard, 150 per batch: 3 shards x 2 batches, each submitted once, billed once
    assert rep.finished and rep.rows_embedded == 600 and rep.rows_dead_letter == 0
    assert st["submitted"] == 6 and st["completed"] == 6 and rep.batches.submitted == 6
    assert rep.batches.completed == 6 and rep.batches.resumed == rep.batches.resubmitted == 0
    # the bill: the batches' tokens, plus the endpoint check's one tiny /v1/embeddings request
    assert rep.batches.billed_tokens == st["billed_tokens"] > 0
    assert rep.tokens == st["billed_tokens"] + stats["tokens"] and stats["requests"] == 1
    assert rep.batches.polls == st["status_polls"] and rep.batches.downloads == st["downloads"] == 6
    # the stand-in queues a batch 0.05 s, then processes it 0.1 s + 0.05 s per 1,000 inputs; polls see both
    assert rep.batches.queued_s > 0 and rep.batches.processing_s > 0
    assert rep.batches.wait_s == pytest.approx(rep.batches.queued_s + rep.batches.processing_s)
    recs = records(out)
    assert [r.name for r in recs] == ["shard-00000", "shard-00001", "shard-00002"]
    for r in recs:
        assert sorted((e.part, e.attempt, e.status, len(e.positions)) for e in r.batches) == \
            [(0, 1, "completed", 150), (1, 1, "completed", 50)]
        assert r.fingerprint == cfg.fingerprint()
    report = json.loads((out / "_report.json").read_text())
    assert report["batches"]["submitted"] == 6

    from jinabatch.observe.report_html import write_report_html
    from jinabatch.observe.status import format_status, read_status
    status = read_status(Storage.open(out))
    assert status.batches_by_state == {"completed": 6}
    text = format_status(status)
    assert "batches  6 completed" in text and "6 submitted, 0 resumed, 0 resubmitted" in text
    write_report_html(Storage.open(out))
    page = (out / "_report.html").read_text()
    assert "6 submitted, 0 resumed" in page and 'id="chart-batches"' in page
    specs = json.loads(page.split('id="jb-charts">', 1)[1].split("</script>", 1)[0])
    bars = specs["batches"]["data"]["values"]
    assert len(bars) == 6 and {b["status"] for b in bars} == {"completed"}


def test_items_the_api_cannot_embed_are_dead_letters_with_the_reason_and_counts_reconcile(
        ray_local, embed_config, make_jina_server, tmp_path):
    srv = server(make_jina_server, batch_item_fail_marker="@@poison@@", batch_unknown_custom_id=True,
                 batch_drop_first=1, batch_drop_after_bytes=3000)  # and the first download breaks mid-stream
    rows = [{"id": i, "text": f"row {i} about rivers" + (" @@poison@@" if i % 50 == 7 else "")} for i in range(400)]
    write_rows(tmp_path / "corpus" / "part-000.parquet", rows)
    out = tmp_path / "out"
    cfg = batch_config(embed_config, tmp_path / "corpus", out, srv.url, corpus={"columns": []})
    rep = run_embed(cfg, progress=False)
    poisoned = {r["id"] for r in rows if "@@poison@@" in r["text"]}
    dead = read_dead_letters(out)
    assert set(dead.column("id").to_pylist()) == poisoned and len(poisoned) == 8
    assert all("rejected by the Batch Embeddings API" in r and "400" in r for r in dead.column("reason").to_pylist())
    assert rep.rows_in == 400 == rep.rows_embedded + rep.rows_dead_letter and rep.rows_dead_letter == 8
    check_vectors(out, [r for r in rows if r["id"] not in poisoned])
    assert rep.batches.unknown_lines == srv.stats()["batch"]["submitted"] == 2  # one extra line per batch, not a row
    assert rep.batches.download_retries == srv.stats()["batch"]["dropped"] == 1  # downloaded again, whole
    assert not list(out.rglob("*.tmp-*"))


def test_a_failed_batch_is_submitted_again_and_capped_by_max_attempts(ray_local, embed_config, make_jina_server,
                                                                      tmp_path):
    srv = server(make_jina_server, batch_fail_first=1)
    make_corpus(tmp_path / "corpus", files=1, rows_per_file=200, row_group_size=100)
    out = tmp_path / "out"
    cfg = batch_config(embed_config, tmp_path / "corpus", out, srv.url, jina={"max_attempts": 2})
    rep = run_embed(cfg, progress=False)
    assert rep.finished and rep.batches.failed == 1 and rep.batches.resubmitted == 1 and rep.batches.submitted == 2
    (rec,) = records(out)
    assert [(e.attempt, e.status) for e in rec.batches] == [(1, "failed"), (2, "completed")]
    assert srv.stats()["batch"]["submitted"] == 2

    srv2 = server(make_jina_server, batch_fail_first=10)
    out2 = tmp_path / "out2"
    cfg2 = batch_config(embed_config, tmp_path / "corpus", out2, srv2.url, jina={"max_attempts": 2})
    rep2 = run_embed(cfg2, progress=False)
    assert not rep2.finished and rep2.shards_failed == 1
    assert "after 2 submits (jina.max_attempts)" in rep2.failures[0].error
    assert srv2.stats()["batch"]["submitted"] == 2 and not list((out2 / "shards").glob("*.parquet"))


def test_a_run_stopped_by_an_empty_balance_cancels_its_running_batches_and_records_it(
        ray_local, embed_config, make_jina_server, tmp_path):
    srv = server(make_jina_server, batch_queue_s=30.0, batch_balance_after=1)
    make_corpus(tmp_path / "corpus", files=1, rows_per_file=400, row_group_size=100)
    out = tmp_path / "out"
    cfg = batch_config(embed_config, tmp_path / "corpus", out, srv.url)  # two shards at once: one submits, one 402s
    with pytest.raises(BillingError):
        run_embed(cfg, progress=False)
    st = srv.stats()["batch"]
    assert st["submitted"] == 1 and st["cancelled"] == 1 and st["in_flight"] == 0 and st["billed_tokens"] == 0
    entries = [e for r in records(out) for e in r.batches]  # the refused submit left no entry
    assert [(e.status, e.cancelled_by_job) for e in entries] == [("cancelled", True)]
    report = json.loads((out / "_report.json").read_text())
    assert report["batches"]["cancelled"] == 1


def test_driver_killed_with_batches_in_flight_then_rerun_resumes_them_never_submits_again(
        make_jina_server, jina_key, tmp_path):
    """SIGKILL jobs/embed.py (driver, Ray, workers) once every shard's batch id is recorded and still queued; the
    rerun waits on the recorded ids: the stand-in sees no second submit and bills every row's tokens once."""
    import subprocess

    from jinabatch.local_api import fakemodel
    from procs import job_env, kill_when

    srv = server(make_jina_server, batch_queue_s=20.0)  # longer than a killed tree takes to die on a loaded machine
    corpus = make_corpus(tmp_path / "corpus", files=1, rows_per_file=400, row_group_size=100)
    out = tmp_path / "out"
    cmd = embed_command(tmp_path, out, srv.url)
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(cmd, env=job_env(jina_key), stdout=log, stderr=subprocess.STDOUT)
    try:
        kill_when(proc, lambda: len(list((out / "_batches").glob("shard-*.json"))) == 2,
                  lambda: (tmp_path / "first.log").read_text())
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    first = srv.stats()["batch"]
    assert first["submitted"] == 2 and first["completed"] == 0 and not list(out.glob("shards/*.parquet"))
    ids = sorted(e.batch_id for r in records(out) for e in r.batches)

    p = subprocess.run(cmd, env=job_env(jina_key), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    st = srv.stats()["batch"]
    assert st["submitted"] == 2, "the rerun submitted a batch it had recorded"
    assert st["billed_tokens"] == sum(fakemodel.count_tokens(r["text"]) for r in corpus.rows)
    assert sorted(e.batch_id for r in records(out) for e in r.batches) == ids
    check_vectors(out, corpus.rows)
    rep = json.loads((out / "_report.json").read_text())
    assert rep["finished"] and rep["batches"]["resumed"] == 2 and rep["batches"]["submitted"] == 0
    assert jina_key not in p.stdout + p.stderr + (tmp_path / "first.log").read_text()


LONG = "hello " * 8333  # ~8,333 tokens: over nano's 8,192, and not clearly over by estimate (the API decides)
HUGE = "x" * 200_000  # clearly over: never sent


@pytest.mark.parametrize("mode", ["truncate", "skip", "fail"])
def test_over_long_inputs_are_cut_before_submit_dead_lettered_or_fail_the_run(
        ray_local, embed_config, make_jina_server, tmp_path, mode):
    from jinabatch.embed.batches import truncate_to
    from jinabatch.jina.tokens import TokenEstimator
    from jinabatch.local_api import fakemodel

    srv = server(make_jina_server)
    rows = [{"id": i, "text": f"short row {i}"} for i in range(30)] + [{"id": 900, "text": LONG}]
    write_rows(tmp_path / "corpus" / "part-000.parquet", rows, carried=False)
    out = tmp_path / "out"
    cfg = batch_config(embed_config, tmp_path / "corpus", out, srv.url, jina={"on_too_long": mode},
                       corpus={"columns": []})
    if mode == "fail":
        with pytest.raises(BadRowError, match=r"part-000\.parquet row 30 \(id 900\).*rejected by the Batch"):
            run_embed(cfg, progress=False)
        assert not list(out.glob("shards/*.parquet"))
        return
    rep = run_embed(cfg, progress=False)
    assert rep.finished and rep.rows_in == 31 == rep.rows_embedded + rep.rows_dead_letter
    text_of = {r["id"]: r["text"] for r in rows if r["id"] != 900}
    if mode == "truncate":  # cut by the calibrated estimate before submitting: the batch body has no truncate
        assert rep.rows_truncated == 1 and rep.rows_embedded == 31
        text_of[900] = cut = truncate_to(LONG, 8192, TokenEstimator().estimate_one)
        assert 0 < fakemodel.count_tokens(cut) <= 8192 < fakemodel.count_tokens(LONG) and LONG.startswith(cut)
        assert srv.stats()["batch"]["failed"] == 0
    else:  # sent as it is: the API fails the item (status_code 400, in /errors) and the row is a dead letter
        dead = read_dead_letters(out)
        assert dead.column("id").to_pylist() == [900] and rep.rows_embedded == 30
        (reason,) = dead.column("reason").to_pylist()
        assert reason.startswith("too long (about") and "rejected by the Batch Embeddings API" in reason
        assert "8192" in reason and srv.stats()["batch"]["failed"] == 0  # an item failure, not the batch's
    assert_vectors_match(read_output(out), text_of, model=NANO, task=TASK, dims=DIMS)


def test_a_recorded_batch_the_api_no_longer_knows_is_submitted_again_and_said_so(
        ray_local, embed_config, make_jina_server, tmp_path, caplog):
    """A record whose id the service answers 404 for (its batches expired, or another service): submit again."""
    from jinabatch.observe.records import BatchEntry

    srv, corpus, out, cfg = one_shard_recorded(embed_config, make_jina_server, tmp_path, BatchEntry(
        part=0, batch_id="batch_from_another_life", positions=list(range(200)), submitted_at=1.0))
    rep = run_embed(cfg, progress=False)
    assert rep.finished and rep.batches.resumed == 1 and rep.batches.gone == 1 and rep.batches.resubmitted == 1
    (rec,) = records(out)
    assert [(e.batch_id == "batch_from_another_life", e.status, e.attempt) for e in rec.batches] == \
        [(True, "gone", 1), (False, "completed", 2)]
    assert "no longer knows it" in rec.batches[0].error
    assert srv.stats()["batch"]["submitted"] == 1
    check_vectors(out, corpus.rows)


def test_a_worker_killed_while_its_batch_is_queued_is_retried_by_ray_and_resumes_the_recorded_batch(
        ray_local, embed_config, make_jina_server, tmp_path):
    from jinabatch.local_api import fakemodel
    from procs import run_killing_one_worker

    srv = server(make_jina_server, batch_queue_s=3.0)
    corpus = make_corpus(tmp_path / "corpus", files=1, rows_per_file=400, row_group_size=100)
    out = tmp_path / "out"
    cfg = batch_config(embed_config, tmp_path / "corpus", out, srv.url, corpus={"columns": []})
    rep, killed = run_killing_one_worker(lambda: run_embed(cfg, progress=False),
                                         lambda: len(list((out / "_batches").glob("shard-*.json"))) == 2)
    assert killed and killed[0].startswith("ray::embed shard-"), "no shard worker was killed"
    st = srv.stats()["batch"]
    assert rep.finished and st["submitted"] == 2, "the retried task submitted its recorded batch again"
    assert st["billed_tokens"] == sum(fakemodel.count_tokens(r["text"]) for r in corpus.rows)
    assert rep.batches.resumed == 1 and rep.batches.submitted == 1  # the dead attempt's submit died with it
    check_vectors(out, corpus.rows)


def test_ctrl_c_cancels_the_running_batches_and_records_it(make_jina_server, jina_key, tmp_path):
    """SIGINT to jobs/embed.py while its batches are queued: each is cancelled (DELETE), the records say so, the
    job exits 130 saying a rerun resumes; the rerun submits the cancelled parts again."""
    import signal
    import subprocess
    import time

    from procs import job_env

    srv = server(make_jina_server, batch_queue_s=60.0)
    make_corpus(tmp_path / "corpus", files=1, rows_per_file=400, row_group_size=100)
    out = tmp_path / "out"
    cmd = embed_command(tmp_path, out, srv.url)
    proc = subprocess.Popen(cmd, env=job_env(jina_key), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while len(list((out / "_batches").glob("shard-*.json"))) < 2:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    text, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, text[-2000:]
    assert "interrupted" in text and jina_key not in text
    st = srv.stats()["batch"]
    assert st["submitted"] == 2 and st["cancelled"] == 2 and st["in_flight"] == 0
    entries = [e for r in records(out) for e in r.batches]
    assert [(e.status, e.cancelled_by_job) for e in entries] == [("cancelled", True)] * 2
    assert all("Ctrl+C" in e.error for e in entries)


def test_a_key_revoked_mid_run_stops_it_with_auth_error_and_the_record_says_the_cancel_was_refused(
        ray_local, embed_config, make_jina_server, jina_key, tmp_path):
    from jinabatch.errors import AuthError

    srv = server(make_jina_server, batch_queue_s=30.0, batch_auth_fail_after=2)  # 2 submits, then 401 for all
    make_corpus(tmp_path / "corpus", files=1, rows_per_file=400, row_group_size=100)
    out = tmp_path / "out"
    cfg = batch_config(embed_config, tmp_path / "corpus", out, srv.url, batch={"inputs_per_batch": 200},
                       corpus={"columns": [], "rows_per_shard": 400}, ray={"workers": 1})  # one task: 2 submits
    with pytest.raises(AuthError) as e:
        run_embed(cfg, progress=False)
    assert jina_key not in str(e.value) and "401" in str(e.value)
    st = srv.stats()["batch"]
    assert st["submitted"] == 2 and st["cancelled"] == 0  # the revoked key cannot cancel either
    entries = [e for r in records(out) for e in r.batches]
    assert len(entries) == 2 and all(e.error.startswith("cancel failed") and not e.cancelled_by_job for e in entries)
    assert jina_key not in (out / "_batches" / "shard-00000.json").read_text()


def test_batches_in_flight_stay_within_the_cap_so_the_api_never_refuses_one_for_it(
        ray_local, embed_config, make_jina_server, tmp_path):
    """jina.batch.max_in_flight = 1 against a server whose cap is 1: four parts of one shard go one after the
    other, and the server never answers "batches in flight"."""
    srv = server(make_jina_server, batch_max_in_flight=1)
    corpus = make_corpus(tmp_path / "corpus", files=1, rows_per_file=400, row_group_size=100)
    out = tmp_path / "out"
    cfg = batch_config(embed_config, tmp_path / "corpus", out, srv.url,
                       batch={"inputs_per_batch": 100, "max_in_flight": 1},
                       corpus={"columns": [], "rows_per_shard": 400}, ray={"workers": 1})
    rep = run_embed(cfg, progress=False)
    st = srv.stats()["batch"]
    assert rep.finished and st["submitted"] == 4 and st["rejected_in_flight"] == 0 and rep.http_429 == 0
    check_vectors(out, corpus.rows)


def test_polls_that_spend_the_keys_rpm_do_not_starve_the_submits(ray_local, embed_config, make_jina_server, tmp_path):
    """A server that counts every poll and download against the key's RPM (the contract's knob; Jina does not
    publish whether it does): with 60 RPM and four shards' batches being polled, every submit still gets through
    and the run finishes, each part submitted once."""
    srv = server(make_jina_server, batch_polls_spend_rpm=True, rpm=60, batch_queue_s=1.0)
    corpus = make_corpus(tmp_path / "corpus", files=1, rows_per_file=800, row_group_size=100)
    out = tmp_path / "out"
    cfg = batch_config(embed_config, tmp_path / "corpus", out, srv.url, batch={"inputs_per_batch": 100},
                       corpus={"columns": []}, limits={"rpm": 60})
    rep = run_embed(cfg, progress=False)
    st = srv.stats()["batch"]
    assert rep.finished and st["submitted"] == 8 and rep.batches.submitted == 8
    check_vectors(out, corpus.rows)


def test_a_submit_a_killed_run_never_recorded_is_said_so_and_the_part_submitted_again(
        ray_local, embed_config, make_jina_server, tmp_path):
    """The crash window: a record left "submitting" (the run died between the submit and the write of its id). The
    rerun cannot know whether the API accepted it: it says so (log, record, report) and submits the part."""
    from jinabatch.observe.records import BatchEntry

    srv, corpus, out, cfg = one_shard_recorded(embed_config, make_jina_server, tmp_path, BatchEntry(
        part=0, batch_id="", positions=list(range(200)), status="submitting"))
    rep = run_embed(cfg, progress=False)
    assert rep.finished and rep.batches.unrecorded == 1 and rep.batches.submitted == 1 and rep.batches.resumed == 0
    (rec,) = records(out)
    assert [(e.status, e.attempt) for e in rec.batches] == [("unrecorded", 1), ("completed", 2)]
    assert "runs unwatched and is billed if it completes" in rec.batches[0].error
    check_vectors(out, corpus.rows)


def test_a_batch_past_jina_batch_timeout_fails_its_shard_and_a_rerun_waits_on_it_instead_of_submitting_again(
        ray_local, embed_config, make_jina_server, tmp_path):
    """A batch still processing after jina.batch.timeout seconds: the shard fails naming the batch and the setting,
    its id stays recorded, and the rerun (the batch done by then) downloads it — one submit in all, exact vectors."""
    srv = server(make_jina_server, batch_processing_s=6.0)
    corpus = make_corpus(tmp_path / "corpus", files=1, rows_per_file=100, row_group_size=100)
    out = tmp_path / "out"
    cfg = batch_config(embed_config, tmp_path / "corpus", out, srv.url, batch={"timeout": 1.0},
                       corpus={"rows_per_shard": 100})
    rep = run_embed(cfg, progress=False)
    assert not rep.finished and rep.shards_failed == 1 and not list((out / "shards").glob("*.parquet"))
    (failure,) = rep.failures
    assert "jina.batch.timeout = 1s" in failure.error and "is not submitted again" in failure.error
    (rec,) = records(out)
    (entry,) = rec.batches
    assert entry.batch_id and entry.batch_id in failure.error and entry.status != "submitting"
    st = srv.stats()["batch"]
    assert st["submitted"] == 1  # the failed shard's batches are in the report all the same
    assert rep.batches.submitted == 1 and rep.batches.polls == st["status_polls"] > 0 and rep.requests >= 2
    time.sleep(6.5)  # the batch finishes on the stand-in's clock, watched or not
    again = run_embed(cfg, progress=False)
    assert again.finished and again.batches.resumed == 1 and again.batches.submitted == 0
    assert srv.stats()["batch"]["submitted"] == 1
    check_vectors(out, corpus.rows)

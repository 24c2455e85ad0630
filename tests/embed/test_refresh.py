"""Refreshes as deltas: a full output, then a chain of three nightly deltas (edits, adds, deletes — some hitting rows
an earlier night added or edited), a night that changed nothing, and a compaction that equals a full run."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from corpus_gen import assert_vectors_match, make_corpus, read_output
from jinabatch.config import parse_config
from jinabatch.embed.compact import compact
from jinabatch.embed.driver import run_embed
from jinabatch.embed.plan import plan_corpus
from jinabatch.local_api import fakemodel
from jinabatch.observe.records import read_progress
from jinabatch.observe.status import format_status, read_status
from jinabatch.storage import Storage
from refresh_gen import evolve

pytestmark = pytest.mark.slow


def _tokens(texts):
    return sum(fakemodel.count_tokens(t) for t in texts)


@pytest.fixture(scope="module")
def chain(ray_local, jina_key, tmp_path_factory):
    from fixtures_ray import KEY_ENV, base_config
    from jinabatch.local_api.server import LocalServer, ServerSettings

    tmp = tmp_path_factory.mktemp("refresh")
    rows = make_corpus(tmp / "v0", files=3, rows_per_file=400, row_group_size=100).rows
    nights = [(rows, None)]
    for night in (1, 2, 3):
        rows, what = evolve(rows, tmp / f"v{night}", seed=night, edit=0.03, delete=0.02, add=0.02,
                            first_new_id=100_000 * night)
        nights.append((rows, what))
    with LocalServer(ServerSettings(api_keys=frozenset({jina_key}))) as srv, pytest.MonkeyPatch.context() as mp:
        mp.setenv(KEY_ENV, jina_key)

        def cfg(night, out, **output):
            return parse_config(base_config(tmp / f"v{night}", tmp / out, srv.url, corpus={"rows_per_shard": 300},
                                            output={"path": str(tmp / out), **output}))

        reps, spent = {}, {}
        for night, out, prev in ((0, "a", None), (1, "b", "a"), (2, "c", "b"), (3, "d", "c"), (3, "e", "d")):
            before = srv.stats()["tokens"]
            reps[out] = run_embed(cfg(night, out, previous=str(tmp / prev) if prev else None), progress=False)
            spent[out] = srv.stats()["tokens"] - before
        reps["f"] = run_embed(cfg(3, "f"), progress=False)
        before = srv.stats()["tokens"]  # a full output made against the chain (vectors copied from every member)
        reps["k"] = run_embed(cfg(3, "k", previous=str(tmp / "c"), write="full"), progress=False)
        spent["k"] = srv.stats()["tokens"] - before
        yield {"tmp": tmp, "nights": nights, "reps": reps, "spent": spent, "cfg": cfg}


@pytest.mark.parametrize("night,out", [(1, "b"), (2, "c"), (3, "d")])
def test_a_delta_holds_only_new_and_changed_rows_and_the_deleted_ids(chain, night, out):
    tmp, (rows, what) = chain["tmp"], chain["nights"][night]
    table = read_output(tmp / out)
    assert sorted(table.column("id").to_pylist()) == sorted(what["changed"] + what["new"])
    assert_vectors_match(table, {r["id"]: r["text"] for r in rows})
    deleted = pq.read_table(tmp / out / "_delta" / "deleted.parquet").column("id").to_pylist()
    assert sorted(deleted) == sorted(what["deleted"])
    rec = json.loads((tmp / out / "_chain.json").read_text())
    prev = {"b": "a", "c": "b", "d": "c"}[out]
    assert rec["kind"] == "delta" and rec["of_output"]["uri"] == str(tmp / prev)
    assert [m["uri"] for m in rec["members"]] == [str(tmp / x) for x in "abcd"[: night + 1]]
    assert (rec["new"], rec["changed"], rec["deleted"]) == tuple(len(what[k]) for k in ("new", "changed", "deleted"))
    assert rec["rows"] == len(rows) and rec["rows_before"] == len(chain["nights"][night - 1][0])
    assert rec["rows_written"] == table.num_rows and rec["bytes_written"] > 0
    rep = chain["reps"][out]
    assert rep.rows_in == rep.rows_embedded + rep.rows_dead_letter and rep.rows_written == table.num_rows
    assert rep.chain.kind == "delta" and rep.rows_reused == len(rows) - table.num_rows


@pytest.mark.parametrize("night,out", [(1, "b"), (2, "c"), (3, "d")])
def test_a_delta_spends_tokens_only_on_new_and_changed_rows(chain, night, out):
    rows, what = chain["nights"][night]
    text = {r["id"]: r["text"] for r in rows}
    owed = _tokens([text[i] for i in what["changed"] + what["new"]])
    assert 0 < chain["spent"][out] <= 1.05 * owed + 20, (chain["spent"][out], owed)  # + the endpoint check


def test_a_refresh_that_changed_nothing_sends_nothing_writes_no_shard_and_says_so(chain):
    tmp, rep = chain["tmp"], chain["reps"]["e"]
    assert chain["spent"]["e"] == 0 and rep.tokens == 0 and rep.requests == 0
    assert not list((tmp / "e").glob("shards/*.parquet")) and not list((tmp / "e").glob("dead_letter/*"))
    d, e = (json.loads((tmp / x / "_chain.json").read_text()) for x in "de")
    assert e["state"] == d["state"] and e["rows_written"] == 0 and e["deleted"] == 0 and rep.finished
    assert "nothing changed" in rep.summary()
    lines = format_status(read_status(Storage.open(tmp / "e")))
    assert "refresh  delta of " + str(tmp / "d") + " (chain of 5): " in lines and "; nothing changed" in lines
    d_lines = format_status(read_status(Storage.open(tmp / "d")))
    ch = json.loads((tmp / "d" / "_chain.json").read_text())
    assert f"{ch['new']:,} new, {ch['changed']:,} changed, {ch['deleted']:,} deleted" in d_lines


def test_compaction_of_the_chain_equals_a_full_run_row_for_row(chain):
    tmp = chain["tmp"]
    rep = compact(chain["cfg"](3, "d"), str(tmp / "g"))
    g, f = read_output(tmp / "g").sort_by("id"), read_output(tmp / "f").sort_by("id")
    assert g.column("id").to_pylist() == f.column("id").to_pylist() and rep.rows_embedded == f.num_rows
    assert np.array_equal(np.asarray(g.column("embedding").to_pylist(), np.float32),
                          np.asarray(f.column("embedding").to_pylist(), np.float32))
    for col in ("text_hash", "title", "n", "score", "flag"):
        assert g.column(col).to_pylist() == f.column(col).to_pylist(), col
    rec = json.loads((tmp / "g" / "_chain.json").read_text())
    d = json.loads((tmp / "d" / "_chain.json").read_text())
    assert rec["kind"] == "full" and rec["state"] == d["state"] and rec["compacted_from"]["id"] == d["id"]
    # on Ray Data (the path above LOCAL_MAX_ROWS): the same rows
    compact(chain["cfg"](3, "d"), str(tmp / "g2"), local_max_rows=0)
    g2 = read_output(tmp / "g2").sort_by("id")
    assert g2.equals(g)


def test_the_chain_join_on_ray_data_equals_the_in_process_one(chain):
    tmp = chain["tmp"]
    c = chain["cfg"](3, "h", previous=str(tmp / "c"))
    plan = plan_corpus(c, Storage.open(tmp / "h"), local_max_rows=0)
    assert {k: plan.reuse.to_dict()[k] for k in ("reused", "changed", "new", "dropped")} == \
        {k: chain["reps"]["d"].incremental[k] for k in ("reused", "changed", "new", "dropped")}
    for sub in ("_plan/reuse.parquet", "_delta/prior.parquet", "_delta/deleted.parquet"):
        a, b = pq.read_table(tmp / "d" / sub), pq.read_table(tmp / "h" / sub)
        key = "pos" if "reuse" in sub else "id"
        assert a.sort_by(key).equals(b.sort_by(key)), sub


def test_a_full_output_made_against_a_chain_copies_every_vector_from_the_member_holding_it(chain):
    """output.write = "full" with output.previous = a delta (chain of 3): the same rows and exact vectors as a run
    from scratch, and only night 3's new and changed rows sent."""
    tmp = chain["tmp"]
    k, f = read_output(tmp / "k").sort_by("id"), read_output(tmp / "f").sort_by("id")
    assert k.column("id").to_pylist() == f.column("id").to_pylist()
    assert np.array_equal(np.asarray(k.column("embedding").to_pylist(), np.float32),
                          np.asarray(f.column("embedding").to_pylist(), np.float32))
    assert chain["spent"]["k"] <= chain["spent"]["d"] + 20 and chain["reps"]["k"].chain.kind == "full"


@pytest.mark.parametrize("out", ["b", "c", "d"])
def test_a_deltas_shard_tasks_read_only_the_rows_the_join_did_not_reuse(chain, out):
    """A delta's shards are cut from its to-do list, not from the corpus: they hold exactly the new and changed
    rows (300 a shard), so a night's tasks read, embed and write what changed."""
    tmp, night = chain["tmp"], {"b": 1, "c": 2, "d": 3}[out]
    rows, what = chain["nights"][night]
    plan = plan_corpus(chain["cfg"](night, out, previous=str(tmp / "abc"[night - 1])), Storage.open(tmp / out))
    ids = np.concatenate([pq.read_table(f.uri, columns=["id"]).column("id").to_numpy() for f in plan.files])
    todo = pq.read_table(tmp / out / "_plan" / "todo.parquet").column("pos").to_numpy()
    assert sorted(ids[todo].tolist()) == sorted(what["changed"] + what["new"])
    assert plan.shard_rows == len(todo) and all(s.sparse and not s.pieces for s in plan.shards)
    rep = chain["reps"][out]
    assert rep.shards_total == len(plan.shards) == -(-len(todo) // 300)
    done = [r for r in read_progress(Storage.open(tmp / out)) if r.status == "done"]
    assert sum(r.rows_in for r in done) == len(todo) and len(done) == len(plan.shards)


def test_a_changed_row_the_api_cannot_embed_is_a_dead_letter_named_by_file_and_row_and_is_deleted(
        ray_local, jina_key, tmp_path):
    """A delta reads scattered rows; a changed row that became empty and a new row repeating an id are dead letters
    that name the right file and row, and the emptied row's old vector leaves the state (booked as deleted)."""
    from fixtures_ray import KEY_ENV, base_config
    from jinabatch.local_api.server import LocalServer, ServerSettings
    from refresh_gen import write_corpus

    rows = make_corpus(tmp_path / "v0", files=3, rows_per_file=50, row_group_size=10).rows
    night = [dict(r) for r in rows]
    emptied, edited = night[67], night[12]  # part-001 row 17; part-000 row 12
    emptied["text"], edited["text"] = "   ", edited["text"] + " revised"
    night.append({**night[5], "text": "a second row with id 5", "_file": "part-002.parquet"})  # a later duplicate
    write_corpus(tmp_path / "v1", night, row_group_size=10)
    with LocalServer(ServerSettings(api_keys=frozenset({jina_key}))) as srv, pytest.MonkeyPatch.context() as mp:
        mp.setenv(KEY_ENV, jina_key)

        def cfg(v, out, **output):
            return parse_config(base_config(tmp_path / v, tmp_path / out, srv.url, corpus={"rows_per_shard": 40},
                                            output={"path": str(tmp_path / out), **output}))

        run_embed(cfg("v0", "a"), progress=False)
        rep = run_embed(cfg("v1", "b", previous=str(tmp_path / "a")), progress=False)
    dead = pq.read_table(tmp_path / "b" / "dead_letter").to_pylist()
    where = {(d["id"], d["source_file"].rsplit("/", 1)[-1], d["row"], d["reason"].split(" (")[0]) for d in dead}
    assert where == {(emptied["id"], "part-001.parquet", 17, "empty text"), (5, "part-002.parquet", 50, "duplicate id")}
    table = read_output(tmp_path / "b")
    assert table.column("id").to_pylist() == [edited["id"]]
    assert_vectors_match(table, {edited["id"]: edited["text"]})
    assert pq.read_table(tmp_path / "b" / "_delta" / "deleted.parquet").column("id").to_pylist() == [emptied["id"]]
    assert rep.rows_in == len(night) == rep.rows_embedded + rep.rows_dead_letter and rep.rows_reused == len(night) - 3
    assert rep.shards_total == 1 and rep.chain.deleted == 1 and rep.chain.changed == 1


def test_a_delta_killed_mid_run_then_rerun_sends_only_its_unfinished_shards(ray_local, make_jina_server, jina_key,
                                                                           tmp_path):
    """SIGKILL jobs/embed.py writing a delta after two of its shards exist: the rerun finds them by their key (the
    to-do list they were cut from) and sends exactly the rows of the others; the delta is exact."""
    import subprocess

    from fixtures_ray import KEY_ENV, base_config
    from jinabatch.jina.probe import PROBE_TEXT
    from procs import embed_killed_after, job_env

    rows = make_corpus(tmp_path / "v0", files=2, rows_per_file=400, row_group_size=100).rows
    night, what = evolve(rows, tmp_path / "v1", seed=1, edit=0.3, delete=0.02, add=0.05, first_new_id=100_000)
    srv = make_jina_server(latency_ms=150)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(KEY_ENV, jina_key)
        run_embed(parse_config(base_config(tmp_path / "v0", tmp_path / "a", srv.url)), progress=False)
    out = tmp_path / "b"
    data = base_config(tmp_path / "v1", out, srv.url, corpus={"rows_per_shard": 40},
                       jina={"max_inputs_per_request": 10}, ray={"workers": 2},
                       output={"path": str(out), "previous": str(tmp_path / "a")})
    cmd, done = embed_killed_after(data, tmp_path, jina_key)
    plan = plan_corpus(parse_config(data), Storage.open(out))
    assert plan.reuse.sparse and 2 <= len(done) < len(plan.shards), f"kill came too late: {sorted(done)}"
    texts = [t for f in plan.files for t in pq.read_table(f.uri, columns=["text"]).column("text").to_pylist()]
    todo = pq.ParquetFile(out / "_plan" / "todo.parquet")
    owed = [texts[p] for s in plan.shards if s.name not in done
            for p in todo.read_row_group(s.index).column("pos").to_pylist()]
    srv.reset_stats()
    p = subprocess.run(cmd, env=job_env(jina_key), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert srv.stats()["tokens"] == _tokens(owed) + _tokens([PROBE_TEXT])
    table = read_output(out)
    assert sorted(table.column("id").to_pylist()) == sorted(what["changed"] + what["new"])
    assert_vectors_match(table, {r["id"]: r["text"] for r in night})
    assert sorted(pq.read_table(out / "_delta" / "deleted.parquet").column("id").to_pylist()) == sorted(what["deleted"])

"""In-place loads of a chain of refreshes against real Milvus (Lite here; the standalone server below): each delta
applied to the collection behind the alias, verified, rolled back; refused on a collection of another chain;
a night that changed nothing writes nothing; --full loads the folded chain into a new collection."""
from __future__ import annotations

import json

import numpy as np
import pytest
from pymilvus import MilvusClient

from corpus_gen import DIMS, MODEL, TASK, make_corpus
from jinabatch.config import parse_config
from jinabatch.embed.driver import run_embed
from jinabatch.errors import LoadError
from jinabatch.load.milvus import alias_target, physicals
from jinabatch.load.stage import run_load
from jinabatch.local_api import fakemodel
from refresh_gen import evolve

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def nights(ray_local, jina_key, tmp_path_factory):
    """v0..v3 of a 900-row corpus; a = full output of v0, b/c/d = deltas of nights 1-3, e = night 3 again (nothing
    changed), z = a full output of v0 made separately (another chain)."""
    from fixtures_ray import KEY_ENV, base_config
    from jinabatch.local_api.server import LocalServer, ServerSettings

    tmp = tmp_path_factory.mktemp("refresh-load")
    rows = make_corpus(tmp / "v0", files=3, rows_per_file=300, row_group_size=100).rows
    states = [rows]
    for night in (1, 2, 3):
        rows, _ = evolve(rows, tmp / f"v{night}", seed=night, edit=0.04, delete=0.02, add=0.03,
                         first_new_id=100_000 * night)
        states.append(rows)
    big, _ = evolve(states[0], tmp / "vbig", seed=9, edit=0.3, delete=0.05, add=0.05, first_new_id=900_000)
    with LocalServer(ServerSettings(api_keys=frozenset({jina_key}))) as srv, pytest.MonkeyPatch.context() as mp:
        mp.setenv(KEY_ENV, jina_key)
        data = {}
        for night, out, prev in ((0, "a", None), (1, "b", "a"), (2, "c", "b"), (3, "d", "c"), (3, "e", "d"),
                                 (0, "z", None), ("big", "big", "a")):
            data[out] = base_config(tmp / f"v{night}", tmp / out, srv.url, corpus={"rows_per_shard": 200},
                                    output={"path": str(tmp / out), **({"previous": str(tmp / prev)} if prev else {})})
            run_embed(parse_config(data[out]), progress=False)
        yield {"tmp": tmp, "states": states, "data": data, "big": big}


def load_config(nights, out: str, milvus: dict):
    return parse_config({**nights["data"][out], "milvus": milvus})


def assert_holds(client: MilvusClient, alias: str, rows: list[dict]) -> None:
    """The alias holds exactly ``rows``: one row per id, each with its own text's vector and its title."""
    got = client.query(alias, filter="", output_fields=["id", "embedding", "title"], limit=16384,
                       consistency_level="Strong")
    assert client.query(alias, filter="", output_fields=["count(*)"],
                        consistency_level="Strong")[0]["count(*)"] == len(rows)
    by_id = {r["id"]: r for r in got}
    assert len(by_id) == len(got) == len(rows), "two rows for one id, or rows missing"
    assert by_id.keys() == {r["id"] for r in rows}
    want = fakemodel.embed(MODEL, TASK, DIMS, [r["text"] for r in rows])
    have = np.asarray([by_id[r["id"]]["embedding"] for r in rows], np.float32)
    bad = np.flatnonzero(~np.all(have == want, axis=1))
    assert not len(bad), f"{len(bad)} rows hold another vector than their text's, e.g. id {rows[bad[0]]['id']}"
    assert all(by_id[r["id"]]["title"] == r["title"] for r in rows)


def _chain(nights, name):
    return json.loads((nights["tmp"] / name / "_chain.json").read_text())


def test_a_chain_of_deltas_applies_in_place_verified_and_rolls_back_step_by_step(nights, tmp_path):
    st, ms = nights["states"], {"uri": str(tmp_path / "lite.db"), "collection": "nightly"}
    first = run_load(load_config(nights, "a", ms), progress=False)
    assert first.how == "new collection" and first.rows_sent == len(st[0])
    client = MilvusClient(ms["uri"])
    assert_holds(client, "nightly", st[0])
    for night, out in ((1, "b"), (2, "c"), (3, "d")):
        rep = run_load(load_config(nights, out, ms), progress=False)
        ch = _chain(nights, out)
        assert (rep.how, rep.mode, rep.physical) == ("in place", "upsert", first.physical)
        assert rep.rows_sent == ch["new"] + ch["changed"] and rep.rows_deleted == ch["deleted"] > 0
        assert rep.rows == len(st[night]) == ch["rows_before"] + ch["new"] - ch["deleted"]
        assert rep.verified_ids > 0 and rep.state == ch["state"]
        assert_holds(client, "nightly", st[night])
    assert [p.name for p in physicals(client, "nightly")] == [first.physical]  # no new collection was made
    same = run_load(load_config(nights, "e", ms), progress=False)
    assert (same.how, same.rows_sent, same.rows_deleted) == ("unchanged", 0, 0)
    back = run_load(load_config(nights, "d", ms), rollback=True, progress=False)
    assert (back.how, back.mode, back.rows) == ("in place", "rollback", len(st[2]))
    assert_holds(client, "nightly", st[2])
    run_load(load_config(nights, "d", ms), rollback=True, progress=False)
    assert_holds(client, "nightly", st[1])
    run_load(load_config(nights, "c", ms), progress=False)  # the chain goes on from where the rollback left it
    assert_holds(client, "nightly", st[2])
    with pytest.raises(LoadError, match="refused"):  # night 1's delta is not a delta of night 2
        run_load(load_config(nights, "b", ms), progress=False)
    run_load(load_config(nights, "d", ms), rollback=True, progress=False)  # undo c: the collection holds night 1
    run_load(load_config(nights, "d", ms), rollback=True, progress=False)  # and b: night 0
    assert_holds(client, "nightly", st[0])
    caught = run_load(load_config(nights, "d", ms), progress=False)  # b, c and d applied in order, each verified
    assert caught.how == "in place" and caught.rows_sent == sum(_chain(nights, x)["rows_written"] for x in "bcd")
    assert_holds(client, "nightly", st[3])
    client.close()


def test_a_delta_of_another_chain_is_refused_naming_both_and_full_loads_it_into_a_new_collection(nights, tmp_path):
    st, ms = nights["states"], {"uri": str(tmp_path / "lite.db"), "collection": "other"}
    z = run_load(load_config(nights, "z", ms), progress=False)
    with pytest.raises(LoadError) as e:
        run_load(load_config(nights, "b", ms), progress=False)
    msg = str(e.value)
    assert str(nights["tmp"] / "a") in msg and z.physical in msg and str(nights["tmp"] / "z") in msg
    client = MilvusClient(ms["uri"])
    assert_holds(client, "other", st[0])  # untouched
    full = run_load(load_config(nights, "d", ms), full=True, progress=False)
    assert full.how == "new collection" and full.physical != z.physical and full.state == _chain(nights, "d")["state"]
    assert alias_target(client, "other") == full.physical
    assert_holds(client, "other", st[3])
    same = run_load(load_config(nights, "e", ms), progress=False)  # nothing changed since d: nothing to write
    assert same.how == "unchanged" and same.rows_sent == 0
    back = run_load(load_config(nights, "d", ms), rollback=True, progress=False)  # a whole load: the alias moves back
    assert back.physical == z.physical and alias_target(client, "other") == z.physical
    assert_holds(client, "other", st[0])
    client.close()


@pytest.mark.milvus
def test_on_milvus_standalone_a_load_killed_halfway_through_a_delta_is_finished_exactly_by_the_rerun(
        nights, milvus_server, tmp_path, jina_key):
    """Bulk-imported base; the delta's load (jobs/load.py) SIGKILLed while it upserts (the ledger says pending and
    the collection is half-way); the rerun finishes it: exact rows, one per id, no lost deletion; then a rollback."""
    import subprocess
    import sys
    import time

    from jinabatch.load.ledger import Ledger
    from procs import job_env, toml_of

    st = nights["states"]
    ms = {"uri": "embedded", "port": milvus_server.port, "data_dir": str(tmp_path / "unused"), "collection": "killed",
          "insert_batch_mb": 0.002}
    first = run_load(load_config(nights, "a", ms), progress=False)
    assert first.mode == "bulk"
    client = MilvusClient(milvus_server.uri)
    assert_holds(client, "killed", st[0])
    cfg = tmp_path / "big.toml"
    cfg.write_text(toml_of({**nights["data"]["big"], "milvus": ms}))
    cmd = [sys.executable, str(REPO / "jobs" / "load.py"), str(cfg), "--no-progress"]
    ledger = Ledger(client, "killed")
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(cmd, env=job_env(jina_key), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while (e := ledger.get(first.physical)) is None or e.pending is None:
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.3)
        proc.kill()
        proc.wait(30)
    entry = ledger.get(first.physical)
    assert entry.pending is not None and entry.pending.op == "apply", "the kill came after the load had finished"
    p = subprocess.run(cmd, env=job_env(jina_key), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    rep = json.loads(p.stdout.strip().splitlines()[-1])
    assert rep["how"] == "in place" and rep["rows"] == len(nights["big"])
    assert_holds(client, "killed", nights["big"])
    assert ledger.get(first.physical).pending is None
    back = subprocess.run([*cmd, "--rollback"], env=job_env(jina_key), capture_output=True, text=True, timeout=300)
    assert back.returncode == 0, back.stderr[-3000:]
    assert_holds(client, "killed", st[0])
    client.close()


def test_the_nightly_refresh_command_chains_nights_and_catches_up_a_night_whose_load_failed(nights, tmp_path):
    """jinabatch refresh, night after night over one corpus folder: the first night loads a new collection, the next
    apply in place; a night whose load never ran (embedded, _latest.json moved, then the job died) is applied by the
    next night's catch-up before its own delta."""
    import shutil

    from jinabatch.cli.refresh import LATEST, LOCK, refresh

    st, corpus, root = nights["states"], tmp_path / "corpus", tmp_path / "nightly"
    data = {**nights["data"]["a"], "milvus": {"uri": str(tmp_path / "lite.db"), "collection": "cron"}}
    data["corpus"] = {**data["corpus"], "path": str(corpus)}
    data["output"] = {"path": str(tmp_path / "unused")}
    cfg = parse_config(data)
    client = MilvusClient(str(tmp_path / "lite.db"))
    for night in range(4):
        shutil.rmtree(corpus, ignore_errors=True)
        shutil.copytree(nights["tmp"] / f"v{night}", corpus)
        if night == 2:  # the embed finished, the job died before its load
            from jinabatch.embed.driver import run_embed

            two = cfg.model_copy(update={"output": cfg.output.model_copy(update={
                "path": str(root / "n2"), "previous": str(root / "n1")})})
            run_embed(two, progress=False)
            (root / LATEST).write_text(json.dumps({"uri": str(root / "n2")}))
            assert_holds(client, "cron", st[1])
            continue
        done = refresh(cfg, str(root), f"n{night}", progress=False)
        assert done["load"]["how"] == ("new collection" if night == 0 else "in place")
        assert done["chain"]["kind"] == ("full" if night == 0 else "delta")
        assert_holds(client, "cron", st[night])
    again = refresh(cfg, str(root), "n3", progress=False)  # the same night rerun: nothing sent, nothing written
    assert again["load"]["how"] == "unchanged" and again["previous"] == str(root / "n2")
    assert_holds(client, "cron", st[3])
    assert len(physicals(client, "cron")) == 1  # one collection for every night
    assert not (root / LOCK).exists()  # each night let go of the root's lease
    client.close()


def test_a_corpus_that_deleted_every_row_empties_the_collection_in_place_and_rolls_back(nights, tmp_path):
    """Night 1 deletes every row (its file holds none): the delta sends nothing, deletes every id, and the
    collection behind the alias ends empty, verified; the rollback brings every row back."""
    import pyarrow.parquet as pq

    empty = tmp_path / "empty"
    empty.mkdir()
    table = pq.read_table(nights["tmp"] / "v0" / "part-000.parquet").slice(0, 0)
    pq.write_table(table, empty / "part-000.parquet")
    ms = {"uri": str(tmp_path / "lite.db"), "collection": "gone"}
    run_load(load_config(nights, "a", ms), progress=False)
    data = {**nights["data"]["a"], "corpus": {**nights["data"]["a"]["corpus"], "path": str(empty)},
            "output": {"path": str(tmp_path / "none"), "previous": str(nights["tmp"] / "a")}, "milvus": ms}
    rep = run_embed(parse_config(data), progress=False)
    assert rep.finished and rep.tokens == 0 and rep.chain.deleted == len(nights["states"][0]) and rep.chain.rows == 0
    load = run_load(parse_config(data), progress=False)
    assert (load.how, load.rows, load.rows_deleted, load.rows_sent) == ("in place", 0, len(nights["states"][0]), 0)
    client = MilvusClient(ms["uri"])
    assert client.query("gone", filter="", output_fields=["count(*)"], consistency_level="Strong")[0]["count(*)"] == 0
    run_load(parse_config(data), rollback=True, progress=False)
    assert_holds(client, "gone", nights["states"][0])
    client.close()


@pytest.mark.milvus
def test_on_milvus_standalone_a_delta_applies_to_a_collection_the_server_no_longer_has_loaded(nights, milvus_server,
                                                                                              tmp_path):
    """After a restart Milvus may leave the collection behind the alias released (seen with the embedded server
    started per command: "collection not loaded" from the check after the writes); the in-place load loads it."""
    ms = {"uri": "embedded", "port": milvus_server.port, "data_dir": str(tmp_path / "unused"), "collection": "released"}
    first = run_load(load_config(nights, "a", ms), progress=False)
    client = MilvusClient(milvus_server.uri)
    client.release_collection(first.physical)
    rep = run_load(load_config(nights, "b", ms), progress=False)
    assert rep.how == "in place" and rep.physical == first.physical and rep.verified_ids > 0
    assert_holds(client, "released", nights["states"][1])
    client.close()



def test_a_delta_milvus_refuses_stops_with_its_reason_in_one_line_stays_pending_and_rolls_back(
        nights, tmp_path, monkeypatch, jina_key):
    """A changed row whose carried title the collection's VARCHAR field cannot hold: Milvus refuses the upsert; the
    load stops with a LoadError naming the shard file and Milvus's reason (no traceback), the ledger says pending,
    and --rollback brings back the base state."""
    from fixtures_ray import KEY_ENV
    from jinabatch.load.ledger import Ledger
    from refresh_gen import write_corpus

    monkeypatch.setenv(KEY_ENV, jina_key)
    rows = [dict(r) for r in nights["states"][0]]
    rows[7]["title"], rows[7]["text"] = "x" * 70_000, rows[7]["text"] + " edited"
    write_corpus(tmp_path / "vlong", rows)
    data = {**nights["data"]["b"], "corpus": {**nights["data"]["b"]["corpus"], "path": str(tmp_path / "vlong")},
            "output": {"path": str(tmp_path / "long"), "previous": str(nights["tmp"] / "a")}}
    assert run_embed(parse_config(data), progress=False).chain.changed == 1
    ms = {"uri": str(tmp_path / "lite.db"), "collection": "toolong"}
    base = run_load(load_config(nights, "a", ms), progress=False)
    with pytest.raises(LoadError) as e:
        run_load(parse_config({**data, "milvus": ms}), progress=False)
    msg = str(e.value)  # the shard file, the rows and Milvus's own reason
    assert str(tmp_path / "long" / "shards") in msg and "Milvus rejected rows" in msg, msg
    assert "'title'" in msg and "exceeds max_length" in msg, msg
    client = MilvusClient(ms["uri"])
    assert Ledger(client, "toolong").get(base.physical).pending is not None
    run_load(parse_config({**data, "milvus": ms}), rollback=True, progress=False)
    assert_holds(client, "toolong", nights["states"][0])
    client.close()

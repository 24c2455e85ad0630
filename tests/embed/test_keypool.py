"""A pool of keys (``jina.api_key_env`` as a list): workers spread over the keys, each key held to its own
``[limits]`` by a server enforcing them per key, per-key counters in the report that add up to the totals,
and no key's value anywhere. Real local Ray, real HTTP to the local server (which limits per key)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from corpus_gen import assert_vectors_match, make_corpus, read_output
from jinabatch.embed.driver import run_embed

pytestmark = pytest.mark.slow

# sorted order = pool order, so the server's key0/key1 (sorted) are the job's key0/key1
KEYS = ["jina_pool_0_SECRET_a81f3c5d", "jina_pool_1_SECRET_72be09e4"]
ENVS = ["POOL_KEY_A", "POOL_KEY_B"]
LIMITS = {"rpm": 600, "tpm": 120_000, "concurrency": 2}


def _files_containing(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


@pytest.fixture(scope="module")
def pool_run(ray_local, tmp_path_factory):
    from jinabatch.config import parse_config
    from jinabatch.local_api.server import LocalServer, ServerSettings
    from fixtures_ray import base_config

    tmp = tmp_path_factory.mktemp("pool")
    corpus = make_corpus(tmp / "corpus", files=4, rows_per_file=300, row_group_size=100)
    with LocalServer(ServerSettings(api_keys=frozenset(KEYS), burst_seconds=2.0, latency_ms=100, **LIMITS)) as srv, \
            pytest.MonkeyPatch.context() as mp:
        for env, key in zip(ENVS, KEYS):
            mp.setenv(env, key)
        cfg = parse_config(base_config(tmp / "corpus", tmp / "out", srv.url, limits=LIMITS, ray={"workers": 4},
                                       corpus={"rows_per_shard": 100},
                                       jina={"api_key_env": ENVS, "max_inputs_per_request": 16}))
        rep = run_embed(cfg, progress=False)
        yield {"report": rep, "server": srv.stats(), "corpus": corpus, "out": tmp / "out"}


def test_both_keys_are_used_and_each_stays_within_its_own_limits(pool_run):
    st = pool_run["server"]
    assert set(st["by_key"]) == {"key0", "key1"}
    for k, v in st["by_key"].items():
        assert v["ok"] >= 10, f"{k} barely used: {v}"
        assert v["http_429"] == 0 and v["peak_concurrency"] <= LIMITS["concurrency"], (k, v)
    assert st["http_429"] == 0


def test_per_key_counters_match_the_server_and_add_up_to_the_totals(pool_run):
    rep, st = pool_run["report"], pool_run["server"]
    assert set(rep.keys) == {"key0", "key1"}
    for k in ("tokens", "requests", "http_429"):
        assert sum(c[k] for c in rep.keys.values()) == getattr(rep, k)
    for k, c in rep.keys.items():
        assert c["tokens"] == st["by_key"][k]["tokens"] and c["requests"] == st["by_key"][k]["requests"]
        assert 0 < c["utilization"] <= 1.0
    assert rep.tokens == st["tokens"]
    on_disk = json.loads((pool_run["out"] / "_report.json").read_text())
    assert on_disk["keys"]["key1"]["tokens"] == rep.keys["key1"]["tokens"]


def test_the_output_is_complete_and_exact_with_a_pool(pool_run):
    rep, corpus = pool_run["report"], pool_run["corpus"]
    assert rep.finished and rep.rows_embedded == len(corpus.rows) == rep.rows_in
    table = read_output(pool_run["out"])
    assert sorted(table.column("id").to_pylist()) == sorted(corpus.ids)
    assert_vectors_match(table, {r["id"]: r["text"] for r in corpus.rows})


def test_no_key_value_in_reports_shards_or_ray_logs(pool_run, ray_local):
    out = pool_run["out"]
    logs = Path(ray_local._private.worker._global_node.get_logs_dir_path())
    for key in KEYS:
        assert _files_containing(out, key.encode()) == [], "a key was written to the output"
        assert _files_containing(logs, key.encode()) == [], "a key is in Ray's logs"
    assert all(key not in repr(pool_run["report"]) for key in KEYS)


def test_base_url_local_with_a_pool_uses_every_key(ray_local, embed_config, tmp_path):
    """base_url = "local" with two variables: the bundled server gets a key for each, and both are used."""
    make_corpus(tmp_path / "corpus", files=2, rows_per_file=200, row_group_size=100)
    cfg = embed_config(tmp_path / "corpus", tmp_path / "out", "local", limits=LIMITS, ray={"workers": 2},
                       corpus={"rows_per_shard": 100}, jina={"api_key_env": ENVS})
    rep = run_embed(cfg, progress=False)
    assert rep.finished and set(rep.keys) == {"key0", "key1"}
    assert all(c["requests"] >= 2 and c["http_429"] == 0 for c in rep.keys.values()), rep.keys


def test_the_time_series_and_shard_log_name_keys_by_index_and_add_up_per_key(pool_run):
    """With a pool, each sample carries every key's counters (summing to the sample's totals, never going down)
    and each shard record names the key it used as key0/key1; the last sample's per-key tokens are the
    report's (the endpoint check's one request per key included)."""
    from jinabatch.observe.records import read_progress, read_timeseries
    from jinabatch.jina.probe import PROBE_TEXT
    from jinabatch.local_api import fakemodel
    from jinabatch.storage import Storage

    rep, store = pool_run["report"], Storage.open(str(pool_run["out"]))
    samples = read_timeseries(store)
    assert len(samples) >= 2 and all(set(s["keys"]) == {"key0", "key1"} for s in samples)
    for s in samples:
        for k in ("tokens", "requests", "http_429"):
            assert sum(c[k] for c in s["keys"].values()) == s[k], (k, s)
    for a, b in zip(samples, samples[1:]):
        assert all(b["keys"][k]["tokens"] >= a["keys"][k]["tokens"] for k in ("key0", "key1"))
    for k, c in samples[-1]["keys"].items():  # the last sample is the bill: the endpoint check included
        assert (c["tokens"], c["requests"]) == (rep.keys[k]["tokens"], rep.keys[k]["requests"]), (k, c, rep.keys[k])
        assert c["tokens"] > fakemodel.count_tokens(PROBE_TEXT) * 10
    shards = read_progress(store)
    assert {s["key"] for s in shards} == {"key0", "key1"} and len(shards) == rep.shards_done

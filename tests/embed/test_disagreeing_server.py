"""Against a server that counts tokens its own way, the job stays within the key's limits (issue 25).

The stand-in runs in its own process with the ``words`` tokenizer counting 10% more (``token_scale`` 1.1),
2 s buckets full at the start and 20 ms of arrival jitter; the corpus is a long tail from one word to rows far
past the model's 8,192-token cap, sent with ``truncate``, with empty rows, duplicate ids and CJK text. With one
key, and with a pool of two keys whose 2 s buckets (4,000 tokens) are smaller than a capped row, at most 0.5%
of the requests may be refused, every vector must be the one the server gives the (server-truncated) text, and
the counts must reconcile. Real local Ray, real HTTP."""
from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from corpus_gen import assert_vectors_match, read_dead_letters, read_output
from longtail_corpus import write_longtail
from jinabatch.embed.driver import run_embed
from jinabatch.local_api import fakemodel

pytestmark = pytest.mark.slow

KEYS = ["jina_disagree_0_SECRET_5b1e", "jina_disagree_1_SECRET_c94d"]  # sorted: key0, key1
ENVS = ["DISAGREE_KEY_A", "DISAGREE_KEY_B"]
SERVER = dict(tokenizer="words", token_scale=1.1, burst_seconds=2.0, arrival_jitter_ms=20.0, latency_ms=50.0,
              latency_per_token_ms=0.005)
MODEL, TASK, DIMS = "jina-embeddings-v3", "retrieval.passage", 64


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("longtail") / "corpus"
    info = write_longtail(path, 2_000, seed=5, past_cap=0.004, cjk=0.02, empty=0.005, duplicates=0.01)
    assert info["past_cap"] >= 5 and info["empty"] and info["duplicates"] and info["cjk"]
    return path, info


def _run(tmp, corpus_path, limits: dict, keys: int, workers: int):
    from jinabatch.config import parse_config
    from jinabatch.local_api.server import LocalServer, ServerSettings
    from fixtures_ray import base_config

    with LocalServer.spawn(ServerSettings(api_keys=frozenset(KEYS), **SERVER, **limits)) as srv, \
            pytest.MonkeyPatch.context() as mp:
        for env, key in zip(ENVS, KEYS):
            mp.setenv(env, key)
        cfg = parse_config(base_config(corpus_path, tmp / "out", srv.url, limits=limits, ray={"workers": workers},
                                       corpus={"rows_per_shard": 500, "columns": []},
                                       jina={"api_key_env": ENVS[0] if keys == 1 else ENVS[:keys]}))
        rep = run_embed(cfg, progress=False)
        return rep, srv.stats()


@pytest.fixture(scope="module", params=["one key", "two keys"])
def run(request, ray_local, corpus, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(request.param.replace(" ", "-"))
    if request.param == "one key":
        out = _run(tmp, corpus[0], {"rpm": 3000, "tpm": 240_000, "concurrency": 8}, keys=1, workers=2)
    else:  # each key's 2 s bucket holds 4,000 tokens: a row at the 8,192 cap is bigger than it
        out = _run(tmp, corpus[0], {"rpm": 1500, "tpm": 120_000, "concurrency": 4}, keys=2, workers=4)
    return (*out, tmp / "out", request.param)


def test_at_most_half_a_percent_of_the_requests_are_refused(run):
    rep, st, _, label = run
    assert st["requests"] > 150  # enough requests for the share to mean something
    assert st["http_429"] <= 0.005 * st["requests"], (label, st["by_key"])
    if label == "two keys":
        assert all(k["ok"] > 30 for k in st["by_key"].values()), st["by_key"]


def _rows(corpus_path):
    return pq.read_table(corpus_path).to_pylist()


def test_every_vector_is_the_servers_for_its_text_truncated_by_the_servers_count(run, corpus):
    _, _, out, _ = run
    tok = fakemodel.tokenizer(SERVER["tokenizer"], SERVER["token_scale"])
    text_of = {}
    for row in _rows(corpus[0]):
        text_of.setdefault(row["id"], row["text"])  # the first occurrence of an id wins
    cut = {i: tok.truncate(t, 8192) for i, t in text_of.items() if tok.count(t) > 8192}
    table = read_output(out)
    assert len(cut) >= corpus[1]["past_cap"] and set(cut) <= set(table.column("id").to_pylist())
    assert_vectors_match(table, {**text_of, **cut})


def test_counts_reconcile_and_nothing_is_lost(run, corpus):
    rep, st, out, _ = run
    dead = read_dead_letters(out)
    assert rep.finished and rep.rows_in == corpus[1]["rows"]
    assert rep.rows_embedded + rep.rows_dead_letter == rep.rows_in
    seen, expected_dead = set(), 0
    for row in _rows(corpus[0]):
        expected_dead += row["id"] in seen or not row["text"].strip()
        seen.add(row["id"])
    assert rep.rows_dead_letter == dead.num_rows == expected_dead
    assert rep.tokens == st["tokens"]  # what the report bills is what the server counted

"""One shard without Ray: ``process_shard`` with a real client over HTTP to the local server.

Pins down the row checks (null id, null/empty text, duplicates, too long under skip / truncate / fail), the
bisect that isolates a row the API rejects, that the output is written in input order with exact vectors,
and that a failed shard leaves neither a shard file nor a temp file.
"""
from __future__ import annotations

import asyncio
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from corpus_gen import DIMS, MODEL, TASK, assert_vectors_match, expected_vectors, read_dead_letters, write_rows
from jinabatch.local_api import fakemodel
from jinabatch.config import parse_config
from jinabatch.embed.plan import plan_corpus
from jinabatch.errors import BadRowError, ConfigError
from jinabatch.jina.client import JinaClient
from jinabatch.embed.shards import read_shard_meta
from jinabatch.embed.worker import process_shard
from jinabatch.storage import Storage

LIMIT = 8192  # jina-embeddings-v3's tokens per input
# Punctuation costs the fake model a token per byte while the estimate is ~bytes/4: 8402 real tokens, an
# estimate near 2,400, so the estimate lets it through and only the server's 400 can find it.
SNEAKY = "a." * 4200
# Plain words: the estimate (~14,000) is clearly over the limit (and so is the real count, ~8,300).
LONG = "hello " * 8333


def _rows(n: int, start: int = 0) -> list[dict]:
    return [{"id": i, "text": f"row {i} about river stones and copper lanterns"} for i in range(start, start + n)]


def shard_path(out: Path, name: str) -> Path:
    return out / "shards" / f"{name}.parquet"


def _config(corpus: Path, out: Path, url: str, rows_per_shard: int = 1000, **jina) -> object:
    return parse_config({"corpus": {"path": str(corpus), "rows_per_shard": rows_per_shard},
                         "jina": {"base_url": url, "model": MODEL, "task": TASK, "dimensions": DIMS,
                                  "retry_wait_initial": 0.01, "retry_wait_jitter": 0.01, **jina},
                         "output": {"path": str(out)}})


def _run(cfg, out: Path, key: str, url: str):
    """Process every shard of the plan; returns the results."""
    store = Storage.open(out)
    plan = plan_corpus(cfg, store)
    id_field = pa.field(cfg.corpus.id_column, plan.id_type)
    carried = [pa.field(c, t) for c, t in plan.column_types.items()]

    async def go():
        results = []
        async with JinaClient(cfg.jina, api_key=key, base_url=url) as client:
            for s in plan.shards:
                results.append(await process_shard(cfg, s, client, store, id_field=id_field, carried=carried))
        return results

    return asyncio.run(go())


def test_every_kind_of_bad_row_goes_to_dead_letters_with_its_reason(jina_server, jina_key, tmp_path):
    """Null id, null text, empty text, a later duplicate, too long under skip: dead-lettered; the rest exact."""
    a = _rows(20) + [{"id": None, "text": "no id here"}, {"id": 100, "text": None}, {"id": 101, "text": "   "},
                     {"id": 102, "text": LONG}]
    b = _rows(10, start=200) + [{"id": 3, "text": "same id as a.parquet row 3"}]
    write_rows(tmp_path / "c" / "a.parquet", a, carried=False, row_group_size=8)
    write_rows(tmp_path / "c" / "b.parquet", b, carried=False)
    out = tmp_path / "out"
    cfg = _config(tmp_path / "c", out, jina_server.url, rows_per_shard=24, on_too_long="skip")  # a shard per file
    ra, rb = _run(cfg, out, jina_key, jina_server.url)

    assert (ra.rows_in, ra.rows_embedded, ra.rows_dead_letter) == (24, 20, 4)
    assert (rb.rows_in, rb.rows_embedded, rb.rows_dead_letter) == (11, 10, 1)
    assert ra.reasons == {"null id": 1, "null text": 1, "empty text": 1, "too long": 1}
    assert rb.reasons == {"duplicate id": 1}
    dead = read_dead_letters(out).to_pylist()
    by_row = {(Path(d["source_file"]).name, d["row"]): d for d in dead}
    assert set(by_row) == {("a.parquet", 20), ("a.parquet", 21), ("a.parquet", 22), ("a.parquet", 23),
                           ("b.parquet", 10)}
    assert by_row[("b.parquet", 10)]["reason"] == "duplicate id (first at a.parquet row 3)"
    assert by_row[("b.parquet", 10)]["id"] == 3 and by_row[("a.parquet", 23)]["reason"].startswith("too long")
    out_table = pa.concat_tables([pq.read_table(shard_path(out, r.name)) for r in (ra, rb)])
    # in input order, and each vector is its own text's
    assert out_table.column("id").to_pylist() == list(range(20)) + list(range(200, 210))
    assert_vectors_match(out_table, {r["id"]: r["text"] for r in a[:20] + b[:10]})
    meta = read_shard_meta(Storage.open(out), f"shards/{ra.name}.parquet")  # what a resumed run reports
    assert meta["rows_dead_letter"] == 4 and meta["reasons"] == ra.reasons and meta["rows"] == 20


def test_bisect_isolates_the_one_row_the_api_rejects(jina_server, jina_key, tmp_path):
    """A row just over the limit that the estimate lets through: the server's 400 dead-letters only that row."""
    rows = _rows(40)
    rows.insert(23, {"id": 999, "text": SNEAKY})
    write_rows(tmp_path / "c" / "a.parquet", rows, carried=False)
    out = tmp_path / "out"
    cfg = _config(tmp_path / "c", out, jina_server.url, on_too_long="skip")
    before = jina_server.stats()["by_status"].get("400", 0)
    (res,) = _run(cfg, out, jina_key, jina_server.url)
    assert jina_server.stats()["by_status"].get("400", 0) > before, "the sneaky row never reached the server"
    assert (res.rows_embedded, res.rows_dead_letter) == (40, 1)
    (dead,) = read_dead_letters(out).to_pylist()
    assert dead["id"] == 999 and dead["row"] == 23 and dead["reason"].startswith("rejected by the API")
    assert "8192" in dead["reason"] or "token" in dead["reason"]
    table = pq.read_table(shard_path(out, res.name))
    assert table.column("id").to_pylist() == list(range(40))
    assert_vectors_match(table, {r["id"]: r["text"] for r in rows})


def test_truncate_sends_long_rows_and_they_carry_the_truncated_texts_vector(jina_server, jina_key, tmp_path):
    """on_too_long = truncate: long rows are embedded as the API truncates them; none dead-lettered."""
    rows = _rows(5) + [{"id": 50, "text": LONG}, {"id": 51, "text": SNEAKY}]
    write_rows(tmp_path / "c" / "a.parquet", rows, carried=False)
    out = tmp_path / "out"
    (res,) = _run(_config(tmp_path / "c", out, jina_server.url, on_too_long="truncate"), out, jina_key,
                  jina_server.url)
    assert (res.rows_embedded, res.rows_dead_letter) == (7, 0) and res.rows_truncated >= 1
    assert read_dead_letters(out) is None
    table = pq.read_table(shard_path(out, res.name))
    texts = {r["id"]: fakemodel.truncate_text(r["text"], LIMIT) for r in rows}
    assert fakemodel.count_tokens(texts[50]) <= LIMIT < fakemodel.count_tokens(LONG)
    assert_vectors_match(table, texts)
    got = dict(zip(table.column("id").to_pylist(), table.column("embedding").to_pylist()))
    assert got[50] != expected_vectors([LONG])[0].tolist()  # it is the truncated text's, not the full one's


@pytest.mark.parametrize("text, found_by", [(LONG, "estimate"), (SNEAKY, "server")])
def test_fail_stops_naming_id_and_file_and_leaves_no_shard(jina_server, jina_key, tmp_path, text, found_by):
    """on_too_long = fail: BadRowError names the id and the file; no shard file and no temp file remain."""
    rows = _rows(10) + [{"id": 77, "text": text}]
    src = write_rows(tmp_path / "c" / "a.parquet", rows, carried=False)
    out = tmp_path / "out"
    with pytest.raises(BadRowError) as e:
        _run(_config(tmp_path / "c", out, jina_server.url, on_too_long="fail"), out, jina_key, jina_server.url)
    msg = str(e.value)
    assert "77" in msg and str(src) in msg and "row 10" in msg and "on_too_long" in msg
    assert not list((out / "shards").glob("*")), "a failed shard left a file behind"


def test_null_ids_in_several_rows_are_null_id_not_duplicates(jina_server, jina_key, tmp_path):
    """Two rows without an id are both 'null id' (the duplicate finder must not pair the nulls)."""
    rows = _rows(3) + [{"id": None, "text": "x one"}, {"id": None, "text": "x two"}]
    write_rows(tmp_path / "c" / "a.parquet", rows, carried=False)
    out = tmp_path / "out"
    (res,) = _run(_config(tmp_path / "c", out, jina_server.url), out, jina_key, jina_server.url)
    assert res.reasons == {"null id": 2} and res.rows_embedded == 3


# 6,002 real tokens (fits), but the uncalibrated estimate (~10,350) is over 1.25 x the limit
FITS_BUT_LOOKS_LONG = "hello " * 6000


@pytest.mark.parametrize("mode", ["skip", "fail"])
def test_a_row_that_fits_is_embedded_even_when_the_first_estimate_says_too_long(jina_server, jina_key, tmp_path, mode):
    """Before the estimator has calibrated, a fitting row must not be dead-lettered (skip) or stop the run (fail)."""
    rows = [{"id": 1, "text": FITS_BUT_LOOKS_LONG}] + _rows(5, start=2)
    write_rows(tmp_path / "c" / "a.parquet", rows, carried=False)
    out = tmp_path / "out"
    (res,) = _run(_config(tmp_path / "c", out, jina_server.url, on_too_long=mode), out, jina_key, jina_server.url)
    assert (res.rows_embedded, res.rows_dead_letter) == (6, 0)
    assert_vectors_match(pq.read_table(shard_path(out, res.name)), {r["id"]: r["text"] for r in rows})


def test_a_row_far_over_the_limit_is_dead_lettered_without_asking_the_api(jina_server, jina_key, tmp_path):
    """Hundreds of KB of text: dead-lettered by estimate under skip, no 400 spent on it."""
    rows = _rows(3) + [{"id": 9, "text": "hello " * 40000}]
    write_rows(tmp_path / "c" / "a.parquet", rows, carried=False)
    out = tmp_path / "out"
    before = jina_server.stats()["by_status"].get("400", 0)
    (res,) = _run(_config(tmp_path / "c", out, jina_server.url, on_too_long="skip"), out, jina_key, jina_server.url)
    assert jina_server.stats()["by_status"].get("400", 0) == before
    assert res.reasons == {"too long": 1} and res.rows_embedded == 3


@pytest.mark.parametrize("etype", ["binary", "ubinary"])
def test_binary_embedding_types_are_refused_before_any_request(jina_server, jina_key, tmp_path, etype):
    """Packed sign bits are not float vectors: ConfigError naming the setting, no request, no shard file."""
    write_rows(tmp_path / "c" / "a.parquet", _rows(3), carried=False)
    out = tmp_path / "out"
    before = jina_server.stats()["requests"]
    with pytest.raises(ConfigError, match="jina.embedding_type"):
        _run(_config(tmp_path / "c", out, jina_server.url, embedding_type=etype), out, jina_key, jina_server.url)
    assert jina_server.stats()["requests"] == before and not list(out.glob("shards/*.parquet"))


def test_float_embedding_type_writes_the_same_vectors(jina_server, jina_key, tmp_path):
    """embedding_type = float (JSON numbers) gives exactly the vectors base64 gives."""
    rows = _rows(12)
    write_rows(tmp_path / "c" / "a.parquet", rows, carried=False)
    out = tmp_path / "out"
    (res,) = _run(_config(tmp_path / "c", out, jina_server.url, embedding_type="float"), out, jina_key, jina_server.url)
    assert_vectors_match(pq.read_table(shard_path(out, res.name)), {r["id"]: r["text"] for r in rows})


def test_requests_are_full_across_read_batches_only_the_shards_last_is_partial(make_jina_server, jina_key, tmp_path):
    """5,000 short rows in row groups of 300 (read in batches of ~1,024): every request but the shard's last holds
    max_inputs_per_request rows, so a read batch's leftover waits for the next batch instead of going out short
    (which costs requests when RPM binds). Every row in order, once, with its exact vector; two shards do not mix."""
    rows = _rows(5000)
    write_rows(tmp_path / "c" / "a.parquet", rows, carried=False, row_group_size=300)
    srv = make_jina_server(record_inputs=1000)
    out = tmp_path / "out"
    cfg = _config(tmp_path / "c", out, srv.url, rows_per_shard=2500, max_inputs_per_request=700,
                  concurrency=2)
    results = _run(cfg, out, jina_key, srv.url)
    sizes = [len(r["input"]) for r in srv.stats()["inputs_log"]]
    assert sorted(sizes) == [400] * 2 + [700] * 6, sizes  # 1,024-row batches would have sent 324-row leftovers
    sent = [t for r in srv.stats()["inputs_log"] for t in r["input"]]
    assert sorted(sent) == sorted(r["text"] for r in rows) and len(set(sent)) == len(rows)
    for k, res in enumerate(results):
        assert (res.rows_in, res.rows_embedded, res.rows_dead_letter) == (2500, 2500, 0)
        t = pq.read_table(shard_path(out, res.name))
        assert t.column("id").to_pylist() == list(range(k * 2500, k * 2500 + 2500))  # input order
        assert_vectors_match(t, {r["id"]: r["text"] for r in rows})

"""Incremental runs: only new and changed rows are sent; unchanged rows carry their vectors over from
output.previous; the result equals a full run row for row; another embedding key re-embeds everything."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from corpus_gen import assert_vectors_match, make_corpus, read_output, write_rows
from jinabatch.config import parse_config
from jinabatch.embed.driver import run_embed
from jinabatch.embed.plan import plan_corpus
from jinabatch.embed.preview import preview
from jinabatch.errors import ConfigError
from jinabatch.local_api import fakemodel
from jinabatch.storage import Storage

pytestmark = pytest.mark.slow


def _changed_corpus(src, dst: Path, seed: int = 1) -> tuple[list[dict], dict[str, list]]:
    """The corpus with 5% of texts changed, 2% of rows deleted and 2% new rows added (in new files)."""
    rng = random.Random(seed)
    rows = [dict(r) for r in src.rows]
    picks = rng.sample(range(len(rows)), k=len(rows) * 9 // 100)
    changed, deleted = picks[: len(rows) * 5 // 100], set(picks[len(rows) * 5 // 100:])
    for i in changed:
        rows[i]["text"] += " revised edition"
    kept = [r for i, r in enumerate(rows) if i not in deleted]
    new = [{"id": 900_000 + k, "text": f"a brand new row {k} about copper lanterns", "title": f"new {k}", "n": k,
            "score": 0.5, "flag": True} for k in range(len(rows) * 2 // 100)]
    by_file: dict[str, list] = {}
    for r in kept:
        by_file.setdefault(r["_file"], []).append(r)
    for name, part in by_file.items():
        write_rows(dst / name, part, row_group_size=100)
    write_rows(dst / "part-zzz-new.parquet", new, row_group_size=100)
    return kept + new, {"changed": [rows[i]["id"] for i in changed], "deleted": [rows[i]["id"] for i in deleted],
                        "new": [r["id"] for r in new]}


def _tokens(texts: list[str]) -> int:
    return sum(fakemodel.count_tokens(t) for t in texts)


@pytest.fixture(scope="module")
def incremental(ray_local, jina_key, tmp_path_factory):
    from jinabatch.local_api.server import LocalServer, ServerSettings
    from fixtures_ray import KEY_ENV, base_config

    tmp = tmp_path_factory.mktemp("incremental")
    corpus = make_corpus(tmp / "v1", files=4, rows_per_file=500, row_group_size=100)
    rows2, what = _changed_corpus(corpus, tmp / "v2")
    with LocalServer(ServerSettings(api_keys=frozenset({jina_key}))) as srv, pytest.MonkeyPatch.context() as mp:
        mp.setenv(KEY_ENV, jina_key)

        def cfg(corpus_dir, out, **output):
            return parse_config(base_config(corpus_dir, out, srv.url, corpus={"rows_per_shard": 300},
                                            output={"path": str(out), **output}))

        full1 = run_embed(cfg(tmp / "v1", tmp / "a"), progress=False)
        plan_view, _ = preview(cfg(tmp / "v2", tmp / "b", previous=str(tmp / "a"), write="full"))
        before = srv.stats()["tokens"]
        inc = run_embed(cfg(tmp / "v2", tmp / "b", previous=str(tmp / "a"), write="full"), progress=False)
        inc_tokens = srv.stats()["tokens"] - before
        full2 = run_embed(cfg(tmp / "v2", tmp / "c"), progress=False)
        yield {"tmp": tmp, "rows": rows2, "what": what, "full1": full1, "inc": inc, "inc_tokens": inc_tokens,
               "full2": full2, "preview": plan_view, "cfg": cfg}


def test_incremental_run_sends_only_new_and_changed_rows(incremental):
    """5% changed, 2% new, 2% deleted: tokens spent <= 1.05x the new and changed rows' tokens; counts exact."""
    run, what = incremental, incremental["what"]
    text = {r["id"]: r["text"] for r in run["rows"]}
    owed = _tokens([text[i] for i in what["changed"] + what["new"]])
    assert 0 < run["inc_tokens"] <= 1.05 * owed, (run["inc_tokens"], owed)
    inc = run["inc"].incremental
    assert (inc["reused"], inc["changed"], inc["new"], inc["dropped"]) == (
        2000 - len(what["changed"]) - len(what["deleted"]), len(what["changed"]), len(what["new"]), len(what["deleted"]))
    assert run["inc"].rows_reused == inc["reused"] and run["inc"].finished


def test_incremental_output_equals_a_full_run_row_for_row(incremental):
    """Same ids, same vectors (exactly), same carried columns as embedding the new corpus from scratch."""
    b, c = read_output(incremental["tmp"] / "b"), read_output(incremental["tmp"] / "c")
    b, c = b.sort_by("id"), c.sort_by("id")
    assert b.column("id").to_pylist() == c.column("id").to_pylist()
    assert not set(incremental["what"]["deleted"]) & set(b.column("id").to_pylist()), "a deleted id came back"
    assert np.array_equal(np.asarray(b.column("embedding").to_pylist(), np.float32),
                          np.asarray(c.column("embedding").to_pylist(), np.float32))
    for col in ("text_hash", "title", "n", "score", "flag"):
        assert b.column(col).to_pylist() == c.column(col).to_pylist(), col
    assert_vectors_match(b, {r["id"]: r["text"] for r in incremental["rows"]})


def test_plan_shows_the_incremental_counts_and_tokens_before_spending_them(incremental):
    """jobs/plan.py's preview: the same counts as the run, and tokens within 15% of what it then spent."""
    p, inc = incremental["preview"], incremental["inc"].incremental
    assert {k: p.incremental[k] for k in ("reused", "changed", "new", "dropped")} == \
        {k: inc[k] for k in ("reused", "changed", "new", "dropped")}
    assert abs(p.estimate.tokens - incremental["inc_tokens"]) <= 0.15 * incremental["inc_tokens"]


def test_another_dimension_re_embeds_everything_and_says_why(incremental, jina_server):
    """output.previous made at 64 dims, this run at 128: nothing reused, the report says the key changed."""
    tmp, cfg = incremental["tmp"], incremental["cfg"]
    base = cfg(tmp / "v2", tmp / "d", previous=str(tmp / "a"), write="full").model_dump(exclude={"source"})
    base["jina"]["dimensions"] = 128
    other = parse_config(base)
    p = plan_corpus(other, Storage.open(tmp / "d"))
    assert p.reuse.reused == 0 and "dimensions 64 → 128" in p.reuse.note and "embedded again" in p.reuse.note


@pytest.mark.parametrize("local_max_rows", [0])
def test_ray_data_join_matches_the_in_process_join(incremental, local_max_rows):
    """The distributed join (Ray Data) writes the same reuse table and counts as the in-process one."""
    tmp, cfg = incremental["tmp"], incremental["cfg"]
    c = cfg(tmp / "v2", tmp / "e", previous=str(tmp / "a"), write="full")
    on_ray = plan_corpus(c, Storage.open(tmp / "e"), local_max_rows=local_max_rows)
    timeless = lambda d: {k: v for k, v in d.items() if k != "seconds"}  # noqa: E731 (the join's own time)
    assert timeless(on_ray.reuse.to_dict()) == timeless(incremental["inc"].incremental)
    a = pq.read_table(tmp / "b" / "_plan" / "reuse.parquet")
    b = pq.read_table(tmp / "e" / "_plan" / "reuse.parquet")
    assert a.equals(b) and a.num_rows == on_ray.reuse.reused


def test_output_made_by_the_local_stand_in_is_refused_for_the_real_api(ray_local, embed_config, tmp_path,
                                                                         monkeypatch):
    """base_url = "local", then the real API into the same output.path: refused before any request, saying the
    vectors come from the local stand-in."""
    make_corpus(tmp_path / "c", files=1, rows_per_file=60, row_group_size=60)
    out = tmp_path / "out"
    run_embed(embed_config(tmp_path / "c", out, "local"), progress=False)
    real = embed_config(tmp_path / "c", out, "https://api.jina.ai/v1")
    with pytest.raises(ConfigError) as e:
        run_embed(real, progress=False)
    assert "local stand-in" in str(e.value) and "output.path" in str(e.value)
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["embedding"]["served_by"] == "local stand-in"


@pytest.mark.parametrize("typ", [pa.string(), pa.large_string()])
def test_an_arrow_columns_hashes_are_each_texts_text_hash(typ):
    """The buffer path of text_hashes (the join and the shard writer) equals text_hash row by row: nulls, empty and
    multi-byte texts, a sliced array, a chunked column."""
    from jinabatch.embed.incremental import text_hash, text_hashes

    texts = ["a", None, "", "héllo wörld ✓", "x" * 5000, None, "last"]
    want = [None if t is None else text_hash(t) for t in texts]
    arr = pa.array(texts, typ)
    assert text_hashes(arr).to_pylist() == want == text_hashes(texts).to_pylist()
    assert text_hashes(arr.slice(2)).to_pylist() == want[2:]
    assert text_hashes(pa.chunked_array([arr.slice(0, 3), arr.slice(3)])).to_pylist() == want


def test_a_deltas_to_do_list_is_read_by_row_range_whatever_its_row_groups(tmp_path):
    """write_todo keeps every position the join did not reuse; read_todo gives a shard's rows [start, stop) of it,
    also when row groups do not fall on shard edges (a file written with other row group sizes)."""
    from jinabatch.embed.incremental import TODO, read_todo, write_todo
    from jinabatch.storage import Storage

    out = Storage.open(tmp_path)
    reused = pa.array([0, 1, 2, 5, 9, 10, 11, 30, 49], pa.int64())
    n = write_todo(out, reused, 50, rows_per_shard=7)
    want = [p for p in range(50) if p not in set(reused.to_pylist())]
    assert n == len(want) == 41 and pq.ParquetFile(tmp_path / TODO).metadata.num_row_groups == 6
    assert read_todo(out, 0, 7).tolist() == want[:7] and read_todo(out, 35, 41).tolist() == want[35:]
    pq.write_table(pa.table({"pos": want}), tmp_path / TODO, row_group_size=4)  # edges elsewhere
    assert read_todo(out, 5, 19).tolist() == want[5:19] and read_todo(out, 40, 41).tolist() == want[40:]

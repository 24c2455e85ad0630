"""Carried columns as real corpora have them, on the real Milvus server (2.3.5: no nullable fields) and on
Milvus Lite (3.x: nullable fields): nulls in string, integer, float and bool columns, a timestamp and a date
column — all loaded, returned as written (a null stays null), filterable, and shown by search."""
from __future__ import annotations

import pytest
from pymilvus import MilvusClient

from fixtures_milvus import carried_sample, make_output, sample_texts
from jinabatch.errors import LoadError
from jinabatch.load import milvus, stage
from jinabatch.load.search import format_hits, search
from jinabatch.load.stage import run_load
from jinabatch.load.target import ServerInfo

N = 60
COLUMNS = ["title", "n", "score", "flag", "published", "day"]
SERVER = pytest.param("server", marks=[pytest.mark.slow, pytest.mark.milvus])
DYNAMIC = "key of the dynamic field (a null is an absent key)"


def _uri(kind, request, tmp_path) -> str:
    return str(tmp_path / "lite.db") if kind == "lite" else request.getfixturevalue("milvus_server").uri


def _ids(rows) -> set[str]:
    return {r["id"] for r in rows}


def _expected(want: dict[str, list], test) -> set[str]:
    """Ids of the rows whose values satisfy ``test`` (a comparison with a null is false, as in Milvus)."""
    return {f"doc-{i:06d}" for i in range(N) if test({c: v[i] for c, v in want.items()})}


FILTERS = {
    "score > 5": lambda r: r["score"] is not None and r["score"] > 5,
    'title == "x"': lambda r: r["title"] == "x",
    'published >= "2024-01-10" and published < "2024-01-20"':
        lambda r: r["published"] is not None and "2024-01-10" <= r["published"] < "2024-01-20",
    'day >= "2023-12-05" and day <= "2023-12-09"': lambda r: r["day"] is not None and "2023-12-05" <= r["day"] <= "2023-12-09",
    "n >= 20000 and flag == true": lambda r: r["n"] is not None and r["n"] >= 20000 and r["flag"] is True,
}


def _check_load(client, alias: str, want: dict[str, list]) -> None:
    rows = client.query(alias, filter="", output_fields=["id", *COLUMNS], limit=1000, consistency_level="Strong")
    by_id = {r["id"]: r for r in rows}
    assert len(by_id) == N
    for i in range(N):
        got = {c: by_id[f"doc-{i:06d}"].get(c) for c in COLUMNS}
        assert got == {c: want[c][i] for c in COLUMNS}, f"row {i}"
    for expr, test in FILTERS.items():
        hits = client.query(alias, filter=expr, output_fields=["id"], limit=1000, consistency_level="Strong")
        assert _ids(hits) == _expected(want, test), expr
        assert _expected(want, test), f"the sample gives {expr!r} no rows: a useless check"


@pytest.mark.parametrize("kind", ["lite", SERVER])
def test_nulls_and_dates_load_come_back_as_written_filter_and_show_in_search(kind, request, tmp_path, milvus_config):
    cols, want = carried_sample(N)
    texts = sample_texts(N)
    make_output(tmp_path / "out", texts, rows_per_shard=25, extra=cols)
    uri = _uri(kind, request, tmp_path)
    cfg = milvus_config(uri, tmp_path / "out")
    rep = run_load(cfg, progress=False)
    assert rep.rows == N and rep.verified_ids > 0
    if kind == "lite":  # nullable fields: every carried column is a typed field, a null is a null
        assert rep.mode == "insert" and rep.carried == {c: "nullable field" for c in ["text", *COLUMNS]}
    else:  # no nullable fields: the clean column stays a field, the null-holding ones are dynamic keys
        assert rep.mode == "bulk" and rep.carried == {"text": "field", **{c: DYNAMIC for c in COLUMNS}}
        assert not (tmp_path / "out" / "_import").exists(), "the import copies were not removed"
    client = MilvusClient(uri)
    _check_load(client, cfg.milvus.collection, want)
    if kind == "lite":
        nulls = client.query(cfg.milvus.collection, filter="title is null", output_fields=["id"], limit=1000)
        assert _ids(nulls) == _expected(want, lambda r: r["title"] is None)
    else:
        fields = {f["name"] for f in client.describe_collection(rep.physical)["fields"]}
        assert fields == {"id", "embedding", "text"} and client.describe_collection(rep.physical)["enable_dynamic_field"]
    client.close()
    # search shows a null as null and a date as written
    all_null, filled = search(cfg, texts[0], k=1)[0], search(cfg, texts[5], k=1)[0]
    assert all_null.id == "doc-000000" and all_null.fields == {"text": texts[0], **{c: None for c in COLUMNS}}
    assert "      title: null" in format_hits([all_null]).splitlines()
    assert filled.fields == {"text": texts[5], **{c: want[c][5] for c in COLUMNS}}
    assert filled.fields["published"] == "2024-01-06T00:05:00.000005Z" and filled.fields["day"] == "2023-12-06"


@pytest.mark.slow
@pytest.mark.milvus
def test_server_that_drops_nullable_gets_the_dynamic_layout_not_zeros(tmp_path, milvus_server, milvus_config,
                                                                      monkeypatch):
    """If a server claims nullable fields but silently drops them (2.3.5 does, then imports a null as 0 or ""),
    the load notices on the created collection and falls back to dynamic-field keys."""
    monkeypatch.setattr(stage, "server_info", lambda target: ServerInfo(target.kind, "v2.5.0 (claimed)", True))
    cols, want = carried_sample(N)
    make_output(tmp_path / "out", sample_texts(N), rows_per_shard=30, extra=cols)
    cfg = milvus_config(milvus_server.uri, tmp_path / "out")
    rep = run_load(cfg, progress=False)
    assert rep.carried["title"] == DYNAMIC and rep.carried["text"] == "field"
    client = MilvusClient(milvus_server.uri)
    _check_load(client, cfg.milvus.collection, want)
    client.close()


def test_verification_compares_carried_values_so_a_changed_null_stops_the_swap(tmp_path, milvus_config, monkeypatch):
    """A carried value that comes back different (here: nulls written as "" on the way in) fails the load and
    leaves the alias where it was — what a server silently zero-filling nulls would get."""
    cols, _ = carried_sample(N)
    make_output(tmp_path / "out", sample_texts(N), rows_per_shard=30, extra=cols)
    cfg = milvus_config(str(tmp_path / "lite.db"), tmp_path / "out")
    real = milvus._rows
    monkeypatch.setattr(milvus, "_rows", lambda *a: [{**r, "title": r["title"] or ""} for r in real(*a)])
    with pytest.raises(LoadError, match=r"came back with title = '' but shard-0000\d\.parquet row group 0 holds None"):
        run_load(cfg, progress=False)
    client = MilvusClient(str(tmp_path / "lite.db"))
    assert cfg.milvus.collection not in client.list_aliases().get("aliases", [])
    client.close()

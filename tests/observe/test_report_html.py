"""_report.html: one self-contained page whose charts hold the run's data, drawn by a real browser offline."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from browser import SKIP_REASON, chromium, render
from runlog_sim import Clock, simulate
from jinabatch.observe.report_html import MAX_BARS, MAX_POINTS, render_report_html, series_rows, write_report_html
from jinabatch.observe.records import read_progress, read_timeseries
from jinabatch.storage import Storage

EXTERNAL = re.compile(r"""<(?:script|link|img|iframe|source)\b[^>]*\b(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", re.I)


def chart_specs(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="jb-charts">(.*?)</script>', page, re.S)
    assert m, "the page has no chart data block"
    return json.loads(m.group(1).replace("<\\/", "</"))


def chart_values(spec: dict) -> list[dict]:
    """Every inline data row of a Vega-Lite spec (top-level datasets or data.values, layers included)."""
    rows: list[dict] = []
    for values in (spec.get("datasets") or {}).values():
        rows += values
    stack = [spec]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if isinstance(node.get("data"), dict) and "values" in node["data"]:
                rows += node["data"]["values"]
            stack += [v for k, v in node.items() if k != "datasets"]
        elif isinstance(node, list):
            stack += node
    return rows


@pytest.fixture
def finished(tmp_path):
    out = Storage.open(tmp_path / "out")
    sim = simulate(out, 24, clock=Clock(), rows=100, seconds=10.0, fail={5}, keys=2)
    sim.run()
    rep = sim.report()
    out.write_json("_report.json", rep)
    sim.runlog.finish(rep, "finished")
    return out, sim, rep


def test_page_needs_no_network_and_its_charts_hold_the_runs_totals(finished):
    out, sim, rep = finished
    page = out.read_bytes("_report.html").decode()
    assert not EXTERNAL.findall(page), "the page loads something from the network"
    assert "vegaEmbed" in page and "window.vegaEmbed=" in page  # the JavaScript is inlined
    specs = chart_specs(page)
    assert set(specs) == {"tokens", "requests", "errors", "rows", "keys", "timeline"}
    series = [r for r in chart_values(specs["tokens"]) if "tokens" in r]
    for k in ("tokens", "requests", "rows", "http_429", "retries"):
        assert sum(r[k] for r in series) == sim.totals[k] == (rep[k] if k != "rows" else sim.totals[k])
    limits = [r["limit"] for r in chart_values(specs["tokens"]) if "limit" in r]
    assert limits == [600_000 * 2]  # the TPM limit line, for two pooled keys
    bars = chart_values(specs["timeline"])
    assert sorted(b["shard"] for b in bars) == [f"shard-{i:05d}" for i in range(24)]
    assert {b["status"] for b in bars if b["shard"] == "shard-00005"} == {"failed"}
    assert len({b["worker"] for b in bars}) == 4 and all(b["start"] < b["end"] for b in bars)
    assert f"<th>rows in</th><td>{rep['rows_in']:,}</td>" in page and "$0.0" in page  # headline table, cost


def test_a_ten_hour_series_is_bucketed_to_a_few_hundred_points_that_still_add_up():
    samples, acc = [], {"tokens": 0, "requests": 0, "rows": 0, "http_429": 0, "retries": 0}
    for i in range(7200):  # one sample every 5 s for 10 h
        acc = {k: v + (i % 7) + 1 for k, v in acc.items()}
        samples.append({"t": 1e9 + 5 * i, **acc, "workers": 4})
    rows = series_rows(samples)
    assert len(rows) <= MAX_POINTS + 2 and rows[0]["tokens"] == 0  # a start point, then the buckets
    for k in acc:
        assert sum(r[k] for r in rows) == acc[k] - samples[0][k]
    assert all(abs(r["seconds"] - 60) < 5.01 for r in rows[2:-1])  # ~a minute per point


def test_many_shards_are_drawn_as_shards_per_minute_per_node(tmp_path):
    out = Storage.open(tmp_path / "out")
    sim = simulate(out, MAX_BARS + 200, clock=Clock(), rows=2, seconds=1.0, workers=8)
    sim.run()
    sim.runlog.finish(sim.report(), "finished")
    page = render_report_html(sim.report(), sim.runlog.manifest(), read_timeseries(out), read_progress(out))
    spec = chart_specs(page)["timeline"]
    assert spec["mark"]["type"] == "bar" and spec["encoding"]["y"]["aggregate"] == "count"
    assert len(chart_values(spec)) == MAX_BARS + 200


def test_the_load_stage_adds_its_part_to_the_same_page(finished):
    out, _, _ = finished
    out.write_json("_load_report.json", {
        "collection": "docs", "physical": "docs__v3_64d_1", "rows": 2376, "mode": "bulk", "seconds": 12.5,
        "previous": "docs__v3_64d_0", "dropped": [], "verified_ids": 200,
        "phases": [{"phase": p, "seconds": s} for p, s in [("create", 0.2), ("fill", 9.0), ("flush + index", 1.5),
                                                           ("load", 1.0), ("verify", 0.6), ("alias switch", 0.1)]],
        "imports": [{"t": 3.0, "rows": 1200}, {"t": 9.0, "rows": 1176}]})
    write_report_html(out)
    page = out.read_bytes("_report.html").decode()
    specs = chart_specs(page)
    assert "<h2>Load into Milvus</h2>" in page and "<th>now points at</th><td>docs__v3_64d_1</td>" in page
    assert [r["phase"] for r in chart_values(specs["load_phases"])][-1] == "alias switch"
    assert [r["rows"] for r in chart_values(specs["load_imports"])] == [1200, 2376]
    assert "tokens" in specs  # the embed part is still there


@pytest.mark.slow
@pytest.mark.skipif(chromium() is None, reason=SKIP_REASON)
def test_headless_chromium_draws_every_chart_offline(finished, tmp_path):
    """Every chart div gets an SVG with marks and none reports a failure; a screenshot is kept for a look."""
    out, _, _ = finished
    page = Path(out.path("_report.html"))
    png = tmp_path / "report.png"
    dom = render(page, png)
    names = list(chart_specs(page.read_text()))
    for name in names:
        m = re.search(rf'<div class="chart[^"]*" id="chart-{name}".*?</svg>', dom, re.S)
        assert m, f"chart {name} was not drawn"
        assert 'class="marks"' in m.group(0) and "<path" in m.group(0), f"chart {name} has no marks"
    assert ">chart failed" not in dom
    assert png.stat().st_size > 50_000  # a drawn page, not a blank one
    keep = Path(__file__).resolve().parents[2] / "out" / "test-report.png"
    keep.parent.mkdir(exist_ok=True)
    keep.write_bytes(png.read_bytes())

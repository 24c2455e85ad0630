"""``_report.html``: one self-contained page (no network needed to open it) with the run's charts and figures.

Charts are Vega-Lite specs built with altair; vega, vega-lite and vega-embed are inlined from
``vl_convert.javascript_bundle()`` (the JavaScript ships inside the vl-convert-python wheel), so the page
opens from a laptop, a CI artifact or an air-gapped cluster. Every chart's data sits in the page in
``<script type="application/json" id="jb-charts">`` (one spec per chart); tools can read it from there.

Embed part (from ``_report.json``, ``_manifest.json`` and the run's ``_timeseries`` / ``_progress`` logs):
tokens/min against the TPM limit, requests/min against RPM, 429s and retries per minute, rows/min with
workers active, tokens/min per key (pooled keys), shards per worker slot on a timeline coloured by node,
and the headline table. Load part (from ``_load_report.json`` when the load stage has run): rows, import
tasks over time, phases (create, fill, index, verify, alias switch), where the alias points.
"""
from __future__ import annotations

import html
import json
import logging
from datetime import datetime, timezone
from collections.abc import Mapping, Sequence
from typing import Any

from ..config import Config
from ..storage import Storage
from .progress import format_duration
from .records import (
    COUNTERS,
    Limits,
    Manifest,
    Sample,
    ShardBatches,
    ShardRecord,
    read_batches,
    read_progress,
    read_timeseries,
)
from .report import EmbedReport, LoadReport

log = logging.getLogger(__name__)

__all__ = ["write_report_html", "render_report_html", "report_page", "series_rows", "warm_up", "HTML_NAME", "MAX_POINTS",
           "MAX_BARS"]

HTML_NAME = "_report.html"
MAX_POINTS = 600  # points per line chart: a 10-hour run is bucketed to a minute or so
MAX_BARS = 2000  # shards drawn one by one on the timeline; above, shards finished per bucket per node


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def series_rows(samples: Sequence[Sample | Mapping[str, Any]], max_points: int = MAX_POINTS) -> list[dict[str, Any]]:
    """Chart rows from cumulative samples: per-bucket deltas and per-minute rates. The ``tokens``, ``requests``,
    ``rows``, ``http_429``, ``retries`` of the rows add up to the last sample's counters (less the first's)."""
    samples = [Sample.of(s) for s in samples]
    if len(samples) < 2:
        return []
    first = samples[0]
    span = samples[-1].t - first.t
    bucket = max(span / max_points, 1e-9)
    rows: list[dict[str, Any]] = []
    cur: dict[str, Any] | None = None
    for a, b in zip(samples, samples[1:]):
        idx = int((b.t - first.t) / bucket) if span > 0 else 0
        if cur is None or cur["_idx"] != idx:
            cur = {"_idx": idx, "time": _iso(b.t), "seconds": 0.0, "workers": 0, **dict.fromkeys(COUNTERS, 0),
                   "keys": {}}
            rows.append(cur)
        cur["seconds"] += b.t - a.t
        cur["time"], cur["workers"] = _iso(b.t), b.workers
        for k in COUNTERS:
            cur[k] += getattr(b, k) - getattr(a, k)
        for key, c in (b.keys or {}).items():
            prev = (a.keys or {}).get(key)
            cur["keys"][key] = cur["keys"].get(key, 0) + c.tokens - (prev.tokens if prev else 0)
    rows.insert(0, {"_idx": -1, "time": _iso(first.t), "seconds": 0.0, "workers": first.workers,
                    **dict.fromkeys(COUNTERS, 0), "keys": {}})
    for r in rows:  # the first row marks where the run starts (nothing done yet)
        r.pop("_idx")
        per_min = 60.0 / r["seconds"] if r["seconds"] > 0 else 0.0
        for k in COUNTERS:
            r[f"{k}_per_min"] = round(r[k] * per_min, 2)
        r["keys_per_min"] = {k: round(v * per_min, 2) for k, v in r.pop("keys").items()}
    return rows


def _charts(series: list[dict[str, Any]], shards: list[dict[str, Any]], limits: Limits,
            n_keys: int) -> dict[str, dict[str, Any]]:
    import altair as alt

    specs: dict[str, dict[str, Any]] = {}
    width = 760
    axis = alt.Axis(format="%H:%M:%S", labelAngle=0, labelOverlap=True)
    x = alt.X("time:T", title="time (UTC)", scale=alt.Scale(type="utc"), axis=axis)
    base = alt.Chart(alt.Data(values=series)).properties(width=width, height=220)

    def against(field: str, title: str, limit: float | None, limit_name: str) -> alt.TopLevelMixin:
        line = base.mark_line(interpolate="step-before").encode(
            x=x, y=alt.Y(f"{field}:Q", title=title),
            tooltip=[alt.Tooltip("time:T", title="time", format="%H:%M:%S"), alt.Tooltip(f"{field}:Q", format=",.0f")])
        if not limit:
            return line
        rule = alt.Chart(alt.Data(values=[{"limit": limit, "name": f"{limit_name} limit {limit:,.0f}"}])).mark_rule(
            color="#d62728", strokeDash=[6, 4]).encode(y="limit:Q", tooltip=["name:N"])
        return alt.layer(line, rule)

    if series:
        specs["tokens"] = against("tokens_per_min", "tokens / min", limits.tpm * n_keys, "TPM").properties(
            title="Tokens per minute against the TPM limit").to_dict()
        specs["requests"] = against("requests_per_min", "requests / min", limits.rpm * n_keys,
                                    "RPM").properties(title="Requests per minute against the RPM limit").to_dict()
        labels = "datum.label == 'http_429_per_min' ? '429 answers' : 'retries'"
        specs["errors"] = base.transform_fold(["http_429_per_min", "retries_per_min"], as_=["what", "per_min"]).mark_line(
            interpolate="step-before").encode(x=x, y=alt.Y("per_min:Q", title="per minute"),
                                              color=alt.Color("what:N", title=None, legend=alt.Legend(labelExpr=labels)),
                                              strokeDash=alt.StrokeDash("what:N", legend=None)).properties(
            title="429 answers and retries per minute").to_dict()
        rows_line = base.mark_line(interpolate="step-before").encode(x=x, y=alt.Y("rows_per_min:Q", title="rows / min"))
        workers = base.mark_line(color="#999", strokeDash=[2, 2], interpolate="step-before").encode(
            x=x, y=alt.Y("workers:Q", title="workers active"))
        specs["rows"] = alt.layer(rows_line, workers).resolve_scale(y="independent").properties(
            title="Rows per minute (line) and workers active (dashed)").to_dict()
        if n_keys > 1:
            per_key = [{"time": r["time"], "key": k, "tokens_per_min": v} for r in series
                       for k, v in r["keys_per_min"].items()]
            specs["keys"] = alt.Chart(alt.Data(values=per_key)).mark_line(interpolate="step-before").encode(
                x=x, y=alt.Y("tokens_per_min:Q", title="tokens / min"), color="key:N").properties(
                width=width, height=200, title=f"Tokens per minute per key (each key's TPM limit {limits.tpm:,})"
            ).to_dict()
    if shards:
        if len(shards) <= MAX_BARS:
            specs["timeline"] = alt.Chart(alt.Data(values=shards)).mark_bar(height={"band": 0.8}, stroke="white", strokeWidth=0.5).encode(
                x=alt.X("start:T", title="time (UTC)", scale=alt.Scale(type="utc"), axis=axis), x2="end:T",
                y=alt.Y("worker:N", title="worker slot", sort="ascending"),
                color=alt.Color("node:N", title="node"), opacity=alt.condition("datum.status == 'done'",
                                                                            alt.value(1.0), alt.value(0.35)),
                tooltip=["shard:N", "node:N", "status:N", alt.Tooltip("rows:Q", format=","),
                         alt.Tooltip("tokens:Q", format=","), alt.Tooltip("seconds:Q", format=".1f")]).properties(
                width=width, height=max(80, 24 * len({s["worker"] for s in shards})),
                title="Shards on a timeline: one row per worker slot, colour = Ray node").to_dict()
        else:
            specs["timeline"] = alt.Chart(alt.Data(values=shards)).mark_bar().encode(
                x=alt.X("utcyearmonthdatehoursminutes(end):T", title="time (UTC)"),
                y=alt.Y("count():Q", title="shards finished per minute"), color=alt.Color("node:N", title="node")
            ).properties(width=width, height=220, title="Shards finished per minute, by Ray node").to_dict()
    return specs


def _batch_bars(batches: Sequence[ShardBatches]) -> list[dict[str, Any]]:
    """Batch mode: one bar per batch from its submit to when the job saw it end (to the last record if it has not)."""
    entries = [(r.name, e) for r in batches for e in r.batches][:MAX_BARS]
    last = max((e.finished_at or e.submitted_at for _, e in entries), default=0.0)
    return [{"batch": f"{name} part {e.part}", "id": e.batch_id, "attempt": e.attempt, "status": e.status,
             "start": _iso(e.submitted_at), "end": _iso(e.finished_at or last), "rows": len(e.positions),
             "seconds": round((e.finished_at or last) - e.submitted_at, 1),
             "queued_s": round((e.processing_at or e.finished_at or last) - e.submitted_at, 1)} for name, e in entries]


def _batch_chart(bars: list[dict[str, Any]]) -> dict[str, Any]:
    import altair as alt

    axis = alt.Axis(format="%H:%M:%S", labelAngle=0, labelOverlap=True)
    return alt.Chart(alt.Data(values=bars)).mark_bar(height={"band": 0.8}).encode(
        x=alt.X("start:T", title="time (UTC)", scale=alt.Scale(type="utc"), axis=axis), x2="end:T",
        y=alt.Y("batch:N", title=None, sort="ascending"), color=alt.Color("status:N", title="state"),
        tooltip=["batch:N", "id:N", "attempt:Q", "status:N", alt.Tooltip("rows:Q", format=","),
                 alt.Tooltip("seconds:Q", format=".1f", title="submit to end (s)"),
                 alt.Tooltip("queued_s:Q", format=".1f", title="queued (s)")]).properties(
        width=760, height=max(80, 18 * len({b["batch"] for b in bars})),
        title="Batches over time: submit to end, one row per part of a shard, colour = last state").to_dict()


def _shard_bars(records: Sequence[ShardRecord | Mapping[str, Any]]) -> list[dict[str, Any]]:
    bars = []
    for r in map(ShardRecord.of, records):
        if r.status not in ("done", "failed") or r.started is None:
            continue
        bars.append({"shard": r.name or str(r.shard), "worker": f"slot {r.lane or 0:02d}", "node": (r.node or "?")[:12],
                     "status": r.status, "start": _iso(r.started), "end": _iso(r.finished), "rows": r.rows_in,
                     "tokens": r.tokens, "seconds": r.seconds})
    return bars


def _table(rows: list[tuple[str, Any]]) -> str:
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table>{cells}</table>"


def _n(v: Any) -> str:
    return f"{v:,}" if isinstance(v, int) else f"{v:,.1f}" if isinstance(v, float) else str(v)


def _embed_table(rep: EmbedReport, man: Manifest) -> str:
    price, req = man.price_per_million_tokens, rep.requests
    reasons = ", ".join(f"{k}: {v:,}" for k, v in sorted(rep.dead_letter_reasons.items()))
    rows = [("state", man.state), ("model", f"{rep.model} ({rep.dimensions} dims, task {rep.task}, {rep.embedding_type})"),
            ("rows in", _n(rep.rows_in)), ("rows embedded", _n(rep.rows_embedded)),
            ("rows dead-lettered", _n(rep.rows_dead_letter) + (f" ({reasons})" if reasons else "")),
            ("shards", f"{rep.shards_done:,} done, {rep.shards_skipped:,} skipped, {rep.shards_failed:,} failed of "
                       f"{rep.shards_total:,}"),
            ("tokens", _n(rep.tokens)), ("requests", _n(req)),
            ("429 answers", f"{rep.http_429:,}" + (f" ({rep.http_429 / req:.2%})" if req else "")),
            ("retries", _n(rep.retries)),
            ("utilization", f"{rep.utilization:.1%} of {rep.binding_limit.upper()} ({rep.tokens_per_min:,.0f} "
                            f"tokens/min, {rep.requests_per_min:,.0f} requests/min)"),
            ("limits", ", ".join(f"{k} {v:,}" for k, v in rep.limits.model_dump().items())
             + (f" per key × {len(man.keys)} keys" if len(man.keys) > 1 else "")),
            ("workers", rep.workers),
            ("duration", f"{format_duration(rep.duration_s)} (embedding {format_duration(rep.embed_window_s)})"),
            ("cost", f"${rep.tokens * price / 1e6:,.4f} at ${price:g} per 1M tokens" if price is not None
             else "set jina.price_per_million_tokens to see it")]
    if (b := rep.batches) is not None:
        rows.append(("batches", b.line()))
    if (est := man.plan.estimate) is not None:
        rows.append(("plan's estimate", f"{est.tokens:,} tokens, {format_duration(est.seconds)}"))
    if (c := rep.chain) is not None:  # what the output is in its chain of refreshes
        what = (f"delta of {c.of_output.uri if c.of_output else '?'} (chain of {c.chain_length}): {c.reused:,} reused, "
                f"{c.new:,} new, {c.changed:,} changed, {c.deleted:,} deleted" if c.kind == "delta" else "full output")
        rows.append(("refresh", f"{what}; {c.rows_written:,} rows, {c.bytes_written:,} bytes written"))
    return _table(rows)


def _load_part(load: LoadReport) -> tuple[str, dict[str, dict[str, Any]]]:
    import altair as alt

    rows = [("alias", load.collection), ("now points at", load.physical), ("was", load.previous or "-"),
            ("mode", load.mode), ("how", load.how), ("rows", _n(load.rows)),
            ("rows sent to Milvus", _n(load.rows_sent)), ("ids deleted", _n(load.rows_deleted)),
            ("ids verified vector by vector", _n(load.verified_ids)),
            ("took", format_duration(load.seconds)), ("dropped", ", ".join(load.dropped) or "-")]
    files = load.import_files
    if files:
        copies = files.get("copies")  # only when copies were made
        rows.append(("server read the files from", files["read_from"] + (
            f" ({copies['files']} copies: {copies['how']}, {'removed' if copies['removed'] else 'NOT removed'} "
            "after the load)" if copies else " (in place, no copy)")))
    specs: dict[str, dict[str, Any]] = {}
    if load.phases:
        vals, t = [], 0.0
        for p in load.phases:
            vals.append({"phase": p.phase, "start": round(t, 3), "end": round(t + p.seconds, 3), "seconds": p.seconds})
            t += p.seconds
        specs["load_phases"] = alt.Chart(alt.Data(values=vals)).mark_bar().encode(
            x=alt.X("start:Q", title="seconds into the load"), x2="end:Q",
            y=alt.Y("phase:N", sort=None, title=None), tooltip=["phase:N", alt.Tooltip("seconds:Q", format=".2f")],
            color=alt.Color("phase:N", legend=None)).properties(
            width=760, height=30 * len(vals), title="Load phases (alias switched at the end)").to_dict()
    if load.imports:
        acc, vals = 0, []
        for i, tk in enumerate(load.imports, 1):
            acc += tk.rows
            vals.append({"seconds": tk.t, "rows": acc, "tasks": i})
        specs["load_imports"] = alt.Chart(alt.Data(values=vals)).mark_line(point=True, interpolate="step-after").encode(
            x=alt.X("seconds:Q", title="seconds into the fill"), y=alt.Y("rows:Q", title="rows in the collection"),
            tooltip=["tasks:Q", alt.Tooltip("rows:Q", format=",")]).properties(
            width=760, height=200, title=f"{'Import tasks' if load.mode == 'bulk' else 'Upsert batches'} "
                                         "completed: rows loaded over time").to_dict()
    return _table(rows), specs


_STYLE = """body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:900px;color:#222}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0}th,td{text-align:left;padding:3px 12px 3px 0;vertical-align:top}
th{color:#555;font-weight:600}.chart{margin:18px 0}.note{color:#666}"""


def warm_up() -> None:
    """Pay the page's one-time costs while a run is going rather than after it: importing altair and building
    vl-convert's JavaScript bundle take ~1.8 s the first time in a process (the bundle is cached after)."""
    try:
        import altair  # noqa: F401
        import vl_convert

        vl_convert.javascript_bundle()
    except Exception as e:  # the real write reports it, if it fails there too
        log.debug("report page warm-up failed: %s: %s", type(e).__name__, e)


def render_report_html(report: EmbedReport | Mapping[str, Any] | None, manifest: Manifest | Mapping[str, Any] | None,
                       samples: Sequence[Sample | Mapping[str, Any]], records: Sequence[ShardRecord | Mapping[str, Any]],
                       load: LoadReport | Mapping[str, Any] | None = None,
                       batches: Sequence[ShardBatches] = ()) -> str:
    """The page as a string (no I/O): the embed part from the report, the manifest, the run's samples and shard
    records (and batch records, batch mode); the load part when ``load`` (the load report) is given."""
    import vl_convert

    rep = EmbedReport() if report is None else EmbedReport.of(report)
    man = Manifest() if manifest is None else Manifest.of(manifest)
    limits = rep.limits if rep.limits != Limits() else man.limits
    series = series_rows(samples)
    specs = _charts(series, _shard_bars(records), limits, max(1, len(man.keys)))
    if bars := _batch_bars(batches):
        specs["batches"] = _batch_chart(bars)
    body = [f"<h1>jinabatch embed report</h1><p class=note>{html.escape(rep.output)} — run "
            f"{html.escape(man.run or '?')}</p>", "<h2>Embed</h2>", _embed_table(rep, man)]
    if not series:
        body.append("<p class=note>No requests in this run (every shard was already done), so no time series.</p>")
    for name in specs:
        body.append(f'<div class=chart id="chart-{name}"></div>')
    if load:
        table, load_specs = _load_part(LoadReport.of(load))
        body += ["<h2>Load into Milvus</h2>", table] + [f'<div class=chart id="chart-{n}"></div>' for n in load_specs]
        specs.update(load_specs)
    data = json.dumps(specs, separators=(",", ":")).replace("</", "<\\/")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=utf-8><title>jinabatch report</title><style>{_STYLE}</style>"
            f"<script>{vl_convert.javascript_bundle()}</script></head><body>\n" + "\n".join(body) +
            f'\n<script type="application/json" id="jb-charts">{data}</script>\n'
            "<script>const specs=JSON.parse(document.getElementById('jb-charts').textContent);"
            "for(const [n,s] of Object.entries(specs)){vegaEmbed('#chart-'+n,s,{actions:false,renderer:'svg'})"
            ".catch(e=>{document.getElementById('chart-'+n).textContent='chart failed: '+e;});}</script>"
            "</body></html>\n")


def report_page(config: Config) -> str:
    """Where the run of ``config`` keeps its ``_report.html`` (a path or an ``s3://`` URI)."""
    return Storage.open(config.output.path, config.storage).uri_of(HTML_NAME)


def write_report_html(out: Storage, *, report: EmbedReport | None = None, manifest: Manifest | None = None) -> str:
    """Read what the run (and the load, if it ran) wrote — ``report`` and ``manifest`` when the caller holds them
    already — and write ``_report.html`` beside it; returns its URI."""
    report = report if report is not None else EmbedReport.read(out)
    manifest = manifest if manifest is not None else Manifest.read(out)
    run = manifest.run if manifest is not None else None
    samples = read_timeseries(out, run) if run else []
    records = read_progress(out, run) if run else []
    batches = read_batches(out, limit=MAX_BARS) if report is not None and report.batches is not None else []
    page = render_report_html(report, manifest, samples, records, LoadReport.read(out), batches)
    out.write_bytes(HTML_NAME, page.encode())
    return out.uri_of(HTML_NAME)

"""Status of an embed run from what it writes — ``_manifest.json`` (and ``_report.json`` once finished) — never
from Ray, so it works from any machine that can read the output folder or ``s3://`` prefix.

``read_status(out)`` gives a ``Status`` (``jinabatch status --json`` prints its JSON); ``format_status`` the lines
people read: shards done / running / failed / pending, rows and tokens so far, the current tokens/min against the
TPM limit, 429s, ETA, and spend at ``jina.price_per_million_tokens`` when the run's config set it.
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import Field

from ..errors import ConfigError
from ..storage import Storage
from .progress import format_duration
from .records import MANIFEST, ChainRecord, Manifest, PlanEstimate, Rates, ReportSummary, read_batches
from .report import EmbedReport, LoadReport

__all__ = ["Status", "StatusRate", "read_status", "format_status", "STALE_AFTER_S"]

STALE_AFTER_S = 120.0  # a "running" manifest older than this: the driver may be gone


class StatusRate(Rates):
    """The current rates, and the pool's limits they are measured against (each key's limit × keys)."""

    tpm_limit: int = 0
    tpm_utilization: float | None = None
    rpm_limit: int = 0


class Status(Manifest):
    """The manifest as seen at a moment: ``age_s`` since it was written, ``stale`` if a "running" one stopped
    updating (the driver may be gone), ``eta_s``, ``rows_left``, ``spend_usd`` and the plan's ``estimate`` /
    ``estimate_usd`` (None where unknown); tokens and requests are the report's (the bill) once the run is over."""

    output: str
    age_s: float | None = None
    stale: bool = False
    rate: StatusRate = Field(default_factory=StatusRate)
    eta_s: float | None = None
    rows_left: int = 0
    spend_usd: float | None = None
    estimate: PlanEstimate | None = None
    estimate_usd: float | None = None
    refresh: ChainRecord | None = None  # what the finished output is in its chain: full or delta, with its counts
    load: LoadReport | None = None  # the last load of this output: in place or a new collection, rows sent
    batches_by_state: dict[str, int] | None = None  # batch mode: the latest batch of each part, by its state


def batches_by_state(out: Storage) -> dict[str, int] | None:
    """Batch mode: how many batches (the latest attempt of each part of each shard) the records show in each
    state; None when the output has no batch records."""
    counts: dict[str, int] = {}
    for rec in read_batches(out):
        for part in {e.part for e in rec.batches}:
            state = rec.latest(part).status
            counts[state] = counts.get(state, 0) + 1
    return counts or None


def read_status(out: Storage, *, now: float | None = None) -> Status:
    """The status of the run whose output is ``out`` at ``now`` (default: the clock); ConfigError if no run is there."""
    m = Manifest.read(out)
    if m is None:
        raise ConfigError(f"{out.uri}: no {MANIFEST} here; give the output.path of an embed run (a folder or "
                          "s3:// prefix)")
    report = EmbedReport.read(out) if m.state != "running" else None
    now = time.time() if now is None else now
    n_keys = max(1, len(m.keys))
    tpm_limit, rpm_limit = m.limits.tpm * n_keys, m.limits.rpm * n_keys
    age = round(now - m.updated_ts, 1) if m.updated_ts is not None else None
    running = m.state == "running"
    left = max(0, m.rows.total - m.rows.so_far)
    eta = max(0.0, left / m.rate.rows_per_s - (age or 0.0)) if running and m.rate.rows_per_s else None
    billed = report or m  # the report has what the key was billed once the run is over
    price, est = m.price_per_million_tokens, m.plan.estimate
    seen = {
        "tokens": billed.tokens, "requests": billed.requests, "http_429": billed.http_429, "retries": billed.retries,
        "report": None if report is None else ReportSummary.of(report),
        "rate": StatusRate(**dict(iter(m.rate)), tpm_limit=tpm_limit, rpm_limit=rpm_limit,
                           tpm_utilization=round(m.rate.tokens_per_min / tpm_limit, 4) if tpm_limit else None)}
    return Status(**{**dict(iter(m)), **seen}, output=out.uri, age_s=age, refresh=report.chain if report else None,
                  load=LoadReport.read(out) if report else None,
                  stale=bool(running and age is not None and age > STALE_AFTER_S),
                  eta_s=None if eta is None else round(eta, 1), rows_left=left,
                  spend_usd=round(billed.tokens * price / 1e6, 9) if price is not None else None, estimate=est,
                  estimate_usd=round(est.tokens * price / 1e6, 9) if price is not None and est and est.tokens else None,
                  batches_by_state=batches_by_state(out))


def _since(iso: str | None, now: float) -> str:
    if not iso:
        return "?"
    try:
        return format_duration(now - datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return "?"


def _refresh_lines(st: Status) -> list[str]:
    """What a refresh did: the output (full or delta, rows reused/new/changed/deleted, written) and its load."""
    lines = []
    if (c := st.refresh) is not None and c.kind == "delta":
        lines.append(f"refresh  delta of {c.of_output.uri if c.of_output else '?'} (chain of {c.chain_length}): "
                     f"{c.reused:,} reused, {c.new:,} new, {c.changed:,} changed, {c.deleted:,} deleted; "
                     f"{c.rows_written:,} rows, {c.bytes_written:,} bytes written"
                     + ("; nothing changed" if c.state == c.of_state else ""))
    elif c is not None:
        lines.append(f"output   full: {c.rows:,} rows, {c.bytes_written:,} bytes written")
    if (ld := st.load) is not None:
        lines.append(f"load     {ld.how} ({ld.mode}) on {ld.physical}: {ld.rows_sent:,} rows sent to Milvus, "
                     f"{ld.rows_deleted:,} deleted, {ld.rows:,} rows behind {ld.collection!r}")
    return lines


def format_status(st: Status | Mapping[str, Any], *, now: float | None = None) -> str:
    """Lines for people: one topic per line, figures with thousands separators."""
    st = Status.of(st)
    now = time.time() if now is None else now
    sh, rows, rate = st.shards, st.rows, st.rate
    head = f"embed {st.output}: {st.state}"
    if st.run:
        head += f" (run {st.run}"
        head += f", updated {format_duration(st.age_s)} ago)" if st.age_s is not None else ")"
    out = [head]
    if st.stale:
        out.append(f"warning  no update for {format_duration(st.age_s)}: the driver may have stopped; rerun the "
                   "job to resume")
    out.append(f"shards   {sh.done:,} done, {sh.skipped:,} skipped, {sh.running:,} running, {sh.failed:,} failed, "
               f"{sh.pending:,} pending of {sh.total:,}")
    pct = f" ({rows.so_far / rows.total:.1%})" if rows.total else ""
    out.append(f"rows     {rows.so_far:,} / {rows.total:,}{pct}; in finished shards {rows.embedded:,} embedded, "
               f"{rows.dead_letter:,} dead-lettered")
    share = f" ({st.http_429 / st.requests:.2%})" if st.requests else ""
    out.append(f"tokens   {st.tokens:,} in {st.requests:,} requests; {st.http_429:,} answered 429{share}, "
               f"{st.retries:,} retries")
    if st.state == "running":
        use = f" = {rate.tpm_utilization:.1%} of TPM {rate.tpm_limit:,}" if rate.tpm_limit else ""
        rpm = f" (RPM {rate.rpm_limit:,})" if rate.rpm_limit else ""
        out.append(f"rate     {rate.tokens_per_min:,.0f} tokens/min{use}; {rate.requests_per_min:,.0f} "
                   f"requests/min{rpm} (last {format_duration(rate.window_s)})")
        eta = format_duration(st.eta_s) if st.eta_s is not None else "? (no rows finished recently)"
        out.append(f"ETA      {eta}" + (f" at {rate.rows_per_s:,.1f} rows/s" if st.eta_s is not None else ""))
    elif (r := st.report) is not None:
        out.append(f"result   {r.rows_embedded:,}/{r.rows_in:,} rows embedded, {r.rows_dead_letter:,} dead-lettered "
                   f"in {format_duration(r.duration_s)}; {r.tokens_per_min:,.0f} tokens/min = {r.utilization:.1%} of "
                   f"{r.binding_limit.upper()}")
    out.extend(_refresh_lines(st))
    if st.batches_by_state:
        out.append("batches  " + ", ".join(f"{n:,} {k}" for k, n in sorted(st.batches_by_state.items())))
    if st.report is not None and st.report.batches is not None:
        out.append(f"         {st.report.batches.line()}")
    if st.price_per_million_tokens is not None:
        line = f"spend    ${st.spend_usd:,.4f} so far at ${st.price_per_million_tokens:g} per 1M tokens"
        if st.estimate_usd is not None:
            line += f" (plan's estimate for the whole run ${st.estimate_usd:,.4f})"
        out.append(line)
    if len(st.per_key) > 1:
        for k, c in sorted(st.per_key.items()):
            out.append(f"{k:<8} {c.tokens:,} tokens, {c.requests:,} requests, {c.http_429:,} 429s")
    for r in st.running[:8]:
        out.append(f"running  {r.name} for {_since(r.since, now)}" + (f" on {r.node[:12]}" if r.node else ""))
    for f in st.failures:
        out.append(f"failed   {f.shard}: {f.error}")
    return "\n".join(out)

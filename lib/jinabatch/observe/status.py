"""Status of an embed run from what it writes — ``_manifest.json`` (and ``_report.json`` once finished) — never
from Ray, so it works from any machine that can read the output folder or ``s3://`` prefix.

``read_status(out)`` gives a dict (``jobs/status.py --json`` prints it); ``format_status`` the lines people read:
shards done / running / failed / pending, rows and tokens so far, the current tokens/min against the TPM limit,
429s, ETA, and spend at ``jina.price_per_million_tokens`` when the run's config set it.
"""
from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from ..errors import ConfigError
from ..storage import Storage
from .progress import format_duration
from .runlog import MANIFEST

__all__ = ["read_status", "format_status", "STALE_AFTER_S"]

STALE_AFTER_S = 120.0  # a "running" manifest older than this: the driver may be gone


def _legacy(m: dict[str, Any], report: dict[str, Any] | None) -> dict[str, Any]:
    """A manifest written before the run log (one entry per shard): counts from its list."""
    shards = m.get("shards") or []
    count = {s: sum(1 for x in shards if x.get("status") == s) for s in ("done", "failed", "pending")}
    return {"format": 0, "state": "finished" if report and report.get("finished") else "unknown",
            "fingerprint": m.get("fingerprint"), "embedding": m.get("embedding"),
            "shards": {"total": len(shards), "done": count["done"], "skipped": 0, "running": 0,
                       "failed": count["failed"], "pending": count["pending"]}}


def read_status(out: Storage, *, now: float | None = None) -> dict[str, Any]:
    """Everything the status command shows, as plain data."""
    m = out.read_json(MANIFEST)
    if m is None:
        raise ConfigError(f"{out.uri}: no {MANIFEST} here; give the output.path of an embed run (a folder or "
                          "s3:// prefix)")
    report = out.read_json("_report.json") if m.get("state") != "running" else None
    if "format" not in m:
        m = _legacy(m, report)
    now = time.time() if now is None else now
    limits = m.get("limits") or {}
    n_keys = max(1, len(m.get("keys") or []))
    tpm_limit, rpm_limit = (limits.get("tpm") or 0) * n_keys, (limits.get("rpm") or 0) * n_keys
    rate = m.get("rate") or {}
    rows = m.get("rows") or {}
    state = m.get("state", "unknown")
    age = round(now - m["updated_ts"], 1) if "updated_ts" in m else None
    running = state == "running"
    left = max(0, int(rows.get("total", 0)) - int(rows.get("so_far", 0)))
    eta = None
    if running and rate.get("rows_per_s"):
        eta = max(0.0, left / rate["rows_per_s"] - (age or 0.0))
    tokens = int((report or {}).get("tokens", m.get("tokens", 0)) or 0)
    price = m.get("price_per_million_tokens")
    est = ((m.get("plan") or {}).get("estimate") or {})
    st: dict[str, Any] = {
        "output": out.uri, "state": state, "run": m.get("run"), "started_at": m.get("started_at"),
        "updated_at": m.get("updated_at"), "age_s": age, "stale": bool(running and age is not None and age > STALE_AFTER_S),
        "elapsed_s": m.get("elapsed_s"), "shards": m.get("shards", {}), "rows": rows,
        "tokens": tokens, "requests": int((report or {}).get("requests", m.get("requests", 0)) or 0),
        "http_429": int((report or {}).get("http_429", m.get("http_429", 0)) or 0),
        "retries": int((report or {}).get("retries", m.get("retries", 0)) or 0),
        "rate": {"tokens_per_min": rate.get("tokens_per_min", 0.0), "tpm_limit": tpm_limit,
                 "tpm_utilization": round(rate.get("tokens_per_min", 0.0) / tpm_limit, 4) if tpm_limit else None,
                 "requests_per_min": rate.get("requests_per_min", 0.0), "rpm_limit": rpm_limit,
                 "rows_per_s": rate.get("rows_per_s", 0.0), "window_s": rate.get("window_s", 0.0)},
        "eta_s": None if eta is None else round(eta, 1), "rows_left": left,
        "price_per_million_tokens": price, "spend_usd": round(tokens * price / 1e6, 9) if price is not None else None,
        "estimate": est or None,
        "estimate_usd": round(est["tokens"] * price / 1e6, 9) if price is not None and est.get("tokens") else None,
        "limits": limits, "keys": m.get("keys") or [], "per_key": m.get("per_key") or {},
        "running": m.get("running") or [], "failures": m.get("failures") or [],
        "workers": m.get("workers"), "workers_active": m.get("workers_active"),
    }
    if report is not None:
        st["report"] = {k: report.get(k) for k in ("rows_in", "rows_embedded", "rows_dead_letter", "duration_s",
                                                    "tokens_per_min", "utilization", "binding_limit", "finished")}
    return st


def _since(iso: str | None, now: float) -> str:
    if not iso:
        return "?"
    try:
        return format_duration(now - datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return "?"


def format_status(st: dict[str, Any], *, now: float | None = None) -> str:
    """Lines for people: one topic per line, figures with thousands separators."""
    now = time.time() if now is None else now
    sh, rows, rate = st["shards"], st["rows"], st["rate"]
    head = f"embed {st['output']}: {st['state']}"
    if st.get("run"):
        head += f" (run {st['run']}"
        head += f", updated {format_duration(st['age_s'])} ago)" if st.get("age_s") is not None else ")"
    out = [head]
    if st["stale"]:
        out.append(f"warning  no update for {format_duration(st['age_s'])}: the driver may have stopped; rerun the "
                   "job to resume")
    out.append(f"shards   {sh.get('done', 0):,} done, {sh.get('skipped', 0):,} skipped, {sh.get('running', 0):,} "
               f"running, {sh.get('failed', 0):,} failed, {sh.get('pending', 0):,} pending of {sh.get('total', 0):,}")
    if rows:
        total, so_far = rows.get("total", 0), rows.get("so_far", 0)
        pct = f" ({so_far / total:.1%})" if total else ""
        out.append(f"rows     {so_far:,} / {total:,}{pct}; in finished shards {rows.get('embedded', 0):,} embedded, "
                   f"{rows.get('dead_letter', 0):,} dead-lettered")
    share = f" ({st['http_429'] / st['requests']:.2%})" if st["requests"] else ""
    out.append(f"tokens   {st['tokens']:,} in {st['requests']:,} requests; {st['http_429']:,} answered 429{share}, "
               f"{st['retries']:,} retries")
    if st["state"] == "running":
        use = f" = {rate['tpm_utilization']:.1%} of TPM {rate['tpm_limit']:,}" if rate["tpm_limit"] else ""
        rpm = f" (RPM {rate['rpm_limit']:,})" if rate["rpm_limit"] else ""
        out.append(f"rate     {rate['tokens_per_min']:,.0f} tokens/min{use}; {rate['requests_per_min']:,.0f} "
                   f"requests/min{rpm} (last {format_duration(rate['window_s'])})")
        eta = format_duration(st["eta_s"]) if st["eta_s"] is not None else "? (no rows finished recently)"
        out.append(f"ETA      {eta}" + (f" at {rate['rows_per_s']:,.1f} rows/s" if st["eta_s"] is not None else ""))
    elif st.get("report"):
        r = st["report"]
        out.append(f"result   {r.get('rows_embedded') or 0:,}/{r.get('rows_in') or 0:,} rows embedded, "
                   f"{r.get('rows_dead_letter') or 0:,} dead-lettered in {format_duration(r.get('duration_s'))}; "
                   f"{r.get('tokens_per_min') or 0:,.0f} tokens/min = {r.get('utilization') or 0:.1%} of "
                   f"{str(r.get('binding_limit') or 'tpm').upper()}")
    if st["price_per_million_tokens"] is not None:
        line = f"spend    ${st['spend_usd']:,.4f} so far at ${st['price_per_million_tokens']:g} per 1M tokens"
        if st.get("estimate_usd") is not None:
            line += f" (plan's estimate for the whole run ${st['estimate_usd']:,.4f})"
        out.append(line)
    if len(st["per_key"]) > 1:
        for k, c in sorted(st["per_key"].items()):
            out.append(f"{k:<8} {c.get('tokens', 0):,} tokens, {c.get('requests', 0):,} requests, "
                       f"{c.get('http_429', 0):,} 429s")
    for r in st["running"][:8]:
        out.append(f"running  {r.get('name')} for {_since(r.get('since'), now)}" +
                   (f" on {r['node'][:12]}" if r.get("node") else ""))
    for f in st["failures"]:
        out.append(f"failed   {f.get('shard')}: {f.get('error')}")
    return "\n".join(out)

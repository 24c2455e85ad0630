"""Embed benchmark (``make bench``): how much of the key's budget the job uses, side by side.

One local Jina-compatible server in its own process enforces RPM / TPM / concurrency per key with a
small burst (so overshooting is answered with 429s, as the real API would) and adds latency per
request and per token. On one generated corpus (≥ 20k rows) it runs, in this order:

1. the embed stage with 2 workers,
2. the embed stage with 4 workers,
3. the seed's way: ``JinaEmbeddingFunction`` as pymilvus.model ships it — one blocking POST per call,
   JSON floats, float64, no retry — called batch by batch in a loop, as its docs show (a 429 or 5xx
   is slept off for a second and the batch sent again, which is what a notebook user ends up writing).

Every figure comes from the server's ``/stats`` for that run: utilization = tokens served / (TPM ×
minutes between the first and last answered request) — or the RPM share if RPM binds — and the share
of requests answered 429. Target for the job: ≥ 97% of the binding limit with ≤ 0.5% 429s.

Usage: ``python tests/bench/bench_embed.py [--rows 20000] [--tpm 600000] [--rpm 600] [--concurrency 8]``
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq

from jinabatch.config import parse_config
from jinabatch.embed.driver import run_embed
from jinabatch.local_api.samples import write_corpus
from jinabatch.local_api.server import LocalServer, ServerSettings

KEY = "jina_bench_" + os.urandom(8).hex()


class SeedJinaEmbeddingFunction:
    """pymilvus.model.dense.JinaEmbeddingFunction's request path, reproduced: one POST per call."""

    def __init__(self, model_name: str, api_key: str, task: str, dimensions: int, base_url: str):
        self.model_name, self.task, self.dimensions = model_name, task, dimensions
        self._url = base_url + "/embeddings"
        self._session = httpx.Client(headers={"Authorization": f"Bearer {api_key}"}, timeout=None)

    def encode_documents(self, documents: list[str]) -> list[np.ndarray]:
        resp = self._session.post(self._url, json={"input": documents, "model": self.model_name,
                                                   "task": self.task, "dimensions": self.dimensions})
        resp.raise_for_status()
        data = sorted(resp.json()["data"], key=lambda e: e["index"])
        return [np.array(e["embedding"]) for e in data]


class PeakRSS:
    """Samples the resident memory of Ray's shard-task processes (``ray::embed shard-…``) while a run lasts."""

    def __init__(self, every: float = 0.2):
        import psutil

        self._psutil, self.every, self.peak = psutil, every, 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for p in self._psutil.process_iter(["cmdline", "memory_info"]):
                cmd = " ".join(p.info["cmdline"] or [])
                if cmd.startswith("ray::embed") and p.info["memory_info"]:
                    self.peak = max(self.peak, p.info["memory_info"].rss)
            self._stop.wait(self.every)

    def __enter__(self) -> "PeakRSS":
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()


def utilization(stats: dict, tpm: int, rpm: int) -> tuple[float, str]:
    window = max(1e-9, stats["last_ok_at"] - stats["first_ok_at"])
    t = stats["tokens"] / (tpm * window / 60)
    r = stats["ok"] / (rpm * window / 60)
    return (t, "TPM") if t >= r else (r, "RPM")


def line(name: str, stats: dict, seconds: float, tpm: int, rpm: int, rss: int = 0) -> dict:
    u, which = utilization(stats, tpm, rpm)
    share429 = stats["http_429"] / max(1, stats["requests"])
    row = {"run": name, "seconds": round(seconds, 1), "rows": stats["inputs"], "tokens": stats["tokens"],
           "requests": stats["requests"], "http_429": stats["http_429"], "share_429": share429,
           "utilization": u, "binding": which, "peak_concurrency": stats["peak_concurrency"],
           "peak_worker_rss_mb": round(rss / 2**20)}
    print(f"{name:<26} {seconds:7.1f}s  {stats['inputs']:>7} rows  {stats['tokens']:>9} tokens  "
          f"{stats['requests']:>5} req  429s {stats['http_429']:>4} ({share429:6.2%})  "
          f"utilization {u:6.1%} of {which}  peak conc {stats['peak_concurrency']}"
          + (f"  peak worker RSS {rss / 2**20:.0f} MB" if rss else ""), flush=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--tpm", type=int, default=600_000)
    ap.add_argument("--rpm", type=int, default=600)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--latency-ms", type=float, default=250)
    ap.add_argument("--latency-per-token-ms", type=float, default=0.05)
    ap.add_argument("--burst-seconds", type=float, default=5)
    ap.add_argument("--seed-batch", type=int, default=64, help="batch size of the seed loop")
    ap.add_argument("--json", help="also write the figures here")
    a = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ["JINABENCH_KEY"] = KEY
    tmp = Path(tempfile.mkdtemp(prefix="jinabatch-bench-"))
    write_corpus(tmp / "corpus", a.rows, files=4, seed=7)
    texts = pq.read_table(tmp / "corpus", columns=["text"]).column("text").to_pylist()
    settings = ServerSettings(api_keys=frozenset({KEY}), rpm=a.rpm, tpm=a.tpm, concurrency=a.concurrency,
                              burst_seconds=a.burst_seconds, latency_ms=a.latency_ms,
                              latency_per_token_ms=a.latency_per_token_ms)
    print(f"# embed benchmark: {a.rows} rows; server limits rpm={a.rpm} tpm={a.tpm} concurrency={a.concurrency} "
          f"burst={a.burst_seconds}s; latency {a.latency_ms}ms + {a.latency_per_token_ms}ms/token; 2 cores", flush=True)
    rows = []
    with LocalServer.spawn(settings) as server:
        for workers in (2, 4):
            server.reset_stats()
            cfg = parse_config({
                "corpus": {"path": str(tmp / "corpus"), "rows_per_shard": 2500, "columns": ["topic"]},
                "jina": {"base_url": server.url, "api_key_env": "JINABENCH_KEY", "dimensions": 1024},
                "limits": {"rpm": a.rpm, "tpm": a.tpm, "concurrency": a.concurrency},
                "ray": {"workers": workers}, "output": {"path": str(tmp / f"out-{workers}")}})
            t0 = time.monotonic()
            with PeakRSS() as mem:
                rep = run_embed(cfg, progress=False)
            assert rep.rows_embedded == a.rows, rep.summary()
            rows.append(line(f"jinabatch, {workers} workers", server.stats(), time.monotonic() - t0, a.tpm, a.rpm,
                             mem.peak))
        server.reset_stats()
        ef = SeedJinaEmbeddingFunction("jina-embeddings-v3", KEY, "retrieval.passage", 1024, server.url)
        t0, done = time.monotonic(), 0
        while done < len(texts):
            try:
                ef.encode_documents(texts[done:done + a.seed_batch])
                done += a.seed_batch
            except httpx.HTTPStatusError:
                time.sleep(1)
        rows.append(line(f"seed loop (batch {a.seed_batch})", server.stats(), time.monotonic() - t0, a.tpm, a.rpm))
    job = rows[:2]
    best = max(r["utilization"] for r in job)
    print(f"# ratio of job to seed loop utilization: 2 workers {job[0]['utilization'] / rows[2]['utilization']:.1f}x, "
          f"4 workers {job[1]['utilization'] / rows[2]['utilization']:.1f}x")
    ok = all(r["utilization"] >= 0.97 and r["share_429"] <= 0.005 for r in job)
    print(f"# target ≥97% of the binding limit with ≤0.5% 429s: {'met' if ok else 'NOT met'} (best {best:.1%})")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Scale benchmark (`make bench-scale`, not part of `make test`): planning big corpora, and the job's CPU per row.

    python tests/bench/bench_scale.py [--sizes 1M,5M,20M,50M] [--run-rows 1000000] [--dims 1024]

1. **Plan.** Synthetic corpora (string ids, short texts, row groups of 5,000 rows; written once under
   out/scale/) are planned from scratch with `jobs/plan.py` in a fresh process each: wall time, the driver's
   peak RSS and the largest other process's (a Ray worker of the duplicate pass). Targets: driver ≤ 1 GB and
   flat in rows, no process above 2 GB, 20M rows within 2 minutes here.
2. **100k shards.** `jobs/embed.py` on the 1M-row corpus cut into 100,000 shards of 10 rows: seconds from
   start to the server's first request (plan, resume check, estimate, Ray, scheduling); target within a minute.
3. **Carried-column check.** `load.precheck.check_load_target` with the text column carried, over the 20M-row
   corpus (`--precheck 20M`), in a fresh process each: on Ray Data (what a corpus above 1M rows gets) and in
   the driver process (what every corpus got before): seconds, the driver's peak RSS and the largest other
   process's (tests/bench/precheck_scan.py).
4. **Run.** `jobs/embed.py` over the 1M-row corpus against the local Jina-compatible server in its own process,
   limits far above need: rows/s and CPU seconds per 1,000 rows of the whole job (driver, Ray, workers; not the
   server), with the fixed start-up cost (a 1,000-row run measured the same way) taken out. Target ≤ 0.1.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "lib"))
sys.path.insert(0, str(Path(__file__).parent))

from procmon import run_watched  # noqa: E402
from scale_corpus import write  # noqa: E402

from jinabatch.local_api.server import LocalServer, ServerSettings  # noqa: E402

KEY_ENV = "JINABATCH_BENCH_KEY"
KEY = "jina_bench_scale_key_0000"


def _rows(label: str) -> int:
    return int(float(label[:-1]) * {"K": 1e3, "M": 1e6}[label[-1].upper()])


def _config(path: Path, corpus: Path, out: Path, url: str, dims: int, rows_per_shard: int = 5000) -> Path:
    path.write_text(f"""
[corpus]
path = "{corpus}"
rows_per_shard = {rows_per_shard}
[jina]
base_url = "{url}"
api_key_env = "{KEY_ENV}"
dimensions = {dims}
[limits]
rpm = 1000000
tpm = 10000000000
concurrency = 16
[ray]
workers = 2
num_cpus_per_task = 0.5
[output]
path = "{out}"
""")
    return path


def _env() -> dict:
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", **{KEY_ENV: KEY})
    env.pop("RAY_ADDRESS", None)
    return env


def plan_phase(sizes: list[str], base: Path) -> list[dict]:
    rows_out = []
    for label in sizes:
        n = _rows(label)
        corpus = base / f"corpus-{label}"
        files = max(20, min(200, n // 500_000))
        print(f"corpus {label}: {n:,} rows in {files} files at {corpus} (written once)", flush=True)
        write(corpus, n, files)
        out = base / f"plan-{label}"
        shutil.rmtree(out, ignore_errors=True)
        cfg = _config(base / f"plan-{label}.toml", corpus, out, "local", 1024)
        w = run_watched([sys.executable, str(ROOT / "jobs/plan.py"), str(cfg), "--json"], env=_env())
        if w.returncode != 0:
            raise SystemExit(f"plan of {label} failed: {w.stderr[-2000:]}")
        p = json.loads(w.stdout)
        rows_out.append({"rows": n, "shards": p["shards"], "duplicates": p["duplicates"], "seconds": w.seconds,
                         "driver_mb": w.driver_peak_mb, "other_mb": w.other_peak_mb, "other": w.other_peak_name,
                         "other_private_mb": w.other_private_mb, "other_private": w.other_private_name})
        r = rows_out[-1]
        print(f"  planned in {r['seconds']:.1f}s: {r['shards']:,} shards, {r['duplicates']} duplicates; driver peak "
              f"{r['driver_mb']:.0f} MB; largest other process {r['other_private_mb']:.0f} MB private "
              f"({r['other_private']}), {r['other_mb']:.0f} MB RSS with mapped object-store pages ({r['other']})",
              flush=True)
    return rows_out


def precheck_phase(base: Path, label: str) -> list[dict]:
    n = _rows(label)
    corpus = base / f"corpus-{label}"
    write(corpus, n, max(20, min(200, n // 500_000)))
    results = []
    for engine in ("ray", "local"):
        w = run_watched([sys.executable, str(Path(__file__).parent / "precheck_scan.py"), str(corpus),
                         "--engine", engine], env=_env())
        if w.returncode != 0:
            raise SystemExit(f"carried-column check ({engine}) failed: {w.stderr[-2000:]}")
        r = {**json.loads(w.stdout.strip().splitlines()[-1]), "process_seconds": w.seconds,
             "driver_mb": w.driver_peak_mb, "other_private_mb": w.other_private_mb}
        results.append(r)
        print(f"  {engine}: {r['rows']:,} rows checked in {r['seconds']:.1f}s (Ray's start apart: "
              f"{r['ray_start']:.1f}s; "
              f"{w.seconds:.1f}s with listing and footers); driver peak {r['driver_mb']:.0f} MB, largest other "
              f"{r['other_private_mb']:.0f} MB private", flush=True)
    return results


def first_request_phase(base: Path, rows: int = 1_000_000, shards: int = 100_000) -> dict:
    import time

    import psutil

    corpus = base / "corpus-1M"
    write(corpus, rows, max(20, min(200, rows // 500_000)))
    with LocalServer.spawn(ServerSettings(api_keys=frozenset({KEY}))) as srv:
        out = base / "run-100k-shards"
        shutil.rmtree(out, ignore_errors=True)
        cfg = _config(base / "run-100k-shards.toml", corpus, out, srv.url, 64, rows_per_shard=rows // shards)
        t0 = time.time()
        proc = subprocess.Popen([sys.executable, str(ROOT / "jobs/embed.py"), str(cfg), "--no-progress"], env=_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        first = None
        try:
            while first is None and proc.poll() is None and time.time() - t0 < 600:
                first = srv.stats()["first_ok_at"]
                time.sleep(0.2)
        finally:
            tree = [proc, *psutil.Process(proc.pid).children(recursive=True)] if proc.poll() is None else []
            for p in tree:
                try:
                    p.kill()
                except Exception:
                    pass
            proc.wait()
        if first is None:
            raise SystemExit(f"no request within 600 s: {proc.stderr.read()[-2000:]}")
        seconds = first - t0
        print(f"  {shards:,} shards of {rows // shards} rows: first request {seconds:.1f}s after start", flush=True)
        return {"shards": shards, "seconds": seconds}


def run_phase(base: Path, run_rows: int, dims: int) -> dict:
    label = f"{run_rows // 1000}K" if run_rows < 1_000_000 else f"{run_rows // 1_000_000}M"
    corpus = base / f"corpus-{label}"
    write(corpus, run_rows, max(20, min(200, run_rows // 500_000)))
    tiny = base / "corpus-1K"
    write(tiny, 1000, 1)
    with LocalServer.spawn(ServerSettings(api_keys=frozenset({KEY}))) as srv:
        results = {}
        for name, src, n in (("startup", tiny, 1000), ("run", corpus, run_rows)):
            out = base / f"run-{name}"
            shutil.rmtree(out, ignore_errors=True)
            cfg = _config(base / f"run-{name}.toml", src, out, srv.url, dims, rows_per_shard=10_000)
            w = run_watched([sys.executable, str(ROOT / "jobs/embed.py"), str(cfg), "--no-progress"], env=_env())
            if w.returncode != 0:
                raise SystemExit(f"{name} run failed: {w.stderr[-2000:]}")
            rep = json.loads((out / "_report.json").read_text())
            assert rep["rows_embedded"] + rep["rows_dead_letter"] == n, rep
            results[name] = {"rows": n, "seconds": w.seconds, "cpu": w.cpu_seconds, "driver_mb": w.driver_peak_mb,
                             "other_mb": w.other_peak_mb, "window": rep["embed_window_s"]}
            print(f"  {name}: {n:,} rows in {w.seconds:.1f}s wall ({rep['embed_window_s']:.1f}s embedding), "
                  f"{w.cpu_seconds:.1f} CPU-s for the job's processes; driver peak {w.driver_peak_mb:.0f} MB, "
                  f"largest other {w.other_peak_mb:.0f} MB", flush=True)
    s, r = results["startup"], results["run"]
    per_k = (r["cpu"] - s["cpu"]) / ((r["rows"] - s["rows"]) / 1000)
    return {**r, "startup_cpu": s["cpu"], "cpu_per_1000": per_k, "rows_per_s": r["rows"] / r["seconds"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1M,5M,20M,50M")
    ap.add_argument("--run-rows", type=int, default=1_000_000)
    ap.add_argument("--dims", type=int, default=1024)
    ap.add_argument("--base", default=str(ROOT / "out" / "scale"))
    ap.add_argument("--skip-run", action="store_true")
    ap.add_argument("--precheck", default="20M", help="corpus size for the carried-column check ('' skips it)")
    a = ap.parse_args(argv)
    base = Path(a.base)
    base.mkdir(parents=True, exist_ok=True)
    print("== plan (jobs/plan.py from scratch, one process each) ==", flush=True)
    plans = plan_phase([s.strip() for s in a.sizes.split(",") if s.strip()], base)
    checks = []
    if a.precheck:
        print(f"== carried-column check over {a.precheck} rows (text carried; Ray Data vs the driver) ==", flush=True)
        checks = precheck_phase(base, a.precheck)
    run = first = None
    if not a.skip_run:
        print("== time to the first request with 100,000 shards ==", flush=True)
        first = first_request_phase(base)
        print(f"== run ({a.run_rows:,} short texts, {a.dims} dims, local server in its own process) ==", flush=True)
        run = run_phase(base, a.run_rows, a.dims)
    print("\n| rows | shards | plan time | driver peak RSS | largest other process: private (RSS incl. mapped object "
          "store) |\n|---|---|---|---|---|")
    for p in plans:
        print(f"| {p['rows']:,} | {p['shards']:,} | {p['seconds']:.1f} s | {p['driver_mb']:.0f} MB | "
              f"{p['other_private_mb']:.0f} MB ({p['other_mb']:.0f} MB) |")
    worst = max(plans, key=lambda p: p["driver_mb"])
    print(f"\ndriver peak RSS: max {worst['driver_mb']:.0f} MB (target <= 1024, flat in rows); largest private "
          f"memory of any process {max(max(p['driver_mb'], p['other_private_mb']) for p in plans):.0f} MB "
          "(target <= 2048)")
    for c in checks:
        where = "on Ray Data" if c["engine"] == "ray" else "in the driver process"
        print(f"carried-column check {where}: {c['rows']:,} rows in {c['seconds']:.1f} s (+ {c['ray_start']:.1f} s to "
              f"start Ray); driver peak "
              f"{c['driver_mb']:.0f} MB, largest other process {c['other_private_mb']:.0f} MB private")
    if first:
        print(f"100,000 shards: first API request {first['seconds']:.1f} s after the job started (target <= 60)")
    if run:
        print(f"run: {run['rows']:,} rows in {run['seconds']:.1f} s = {run['rows_per_s']:,.0f} rows/s; "
              f"{run['cpu']:.1f} CPU-s total, {run['startup_cpu']:.1f} of them fixed start-up; "
              f"{run['cpu_per_1000']:.3f} CPU-s per 1,000 rows beyond it (target <= 0.1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Shards that do not depend on how the corpus was written (`make bench`): the same rows three ways.

    python tests/bench/bench_shapes.py [--rows 20000] [--rows-per-shard 2000]

The same rows as (a) one file with a single row group (pyarrow's default for a small table, pandas/Spark-
sized row groups for a big one), (b) well-sized row groups, (c) many tiny files of 20 rows — each embedded by
the job against the local Jina-compatible server in its own process (500 RPM, 1M TPM, 4 concurrent, 100 ms
latency: the request budget binds when requests are small). Prints requests, wall time and their ratio to
the well-sized layout (target: within 10%), and what reading a shard's rows costs when a shard is cut from
the middle of one giant row group (the row group is decoded up to the shard's end) against reading the
well-sized file — the decode overhead next to the API time.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "lib"))
sys.path.insert(0, str(Path(__file__).parent))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from procmon import run_watched  # noqa: E402

from jinabatch.config import parse_config  # noqa: E402
from jinabatch.embed.plan import plan_corpus  # noqa: E402
from jinabatch.embed.reader import read_shard  # noqa: E402
from jinabatch.local_api.server import LocalServer, ServerSettings  # noqa: E402
from jinabatch.storage import Storage  # noqa: E402

KEY_ENV, KEY = "JINABATCH_BENCH_KEY", "jina_bench_shapes_key_0000"
WORDS = "river stone cloud pepper engine violin harbor meadow lantern quartz falcon orchard copper glacier".split()


def _table(rows: int) -> pa.Table:
    return pa.table({"id": [f"doc-{i:07d}" for i in range(rows)],
                     "text": [f"row {i} " + " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(12))
                              for i in range(rows)]})


def write_layouts(base: Path, rows: int, rows_per_shard: int) -> dict[str, Path]:
    t = _table(rows)
    layouts = {"one big row group": base / "big", "well-sized row groups": base / "sized",
               "many tiny files": base / "tiny"}
    for p in layouts.values():
        shutil.rmtree(p, ignore_errors=True)
        p.mkdir(parents=True)
    pq.write_table(t, layouts["one big row group"] / "part-0.parquet", row_group_size=rows)
    pq.write_table(t, layouts["well-sized row groups"] / "part-0.parquet", row_group_size=rows_per_shard)
    for k in range(0, rows, 20):
        pq.write_table(t.slice(k, 20), layouts["many tiny files"] / f"part-{k // 20:06d}.parquet")
    return layouts


def read_cost(folder: Path, out: Path, rows_per_shard: int) -> float:
    """Seconds to read every shard's rows (id, text) as the worker does."""
    cfg = parse_config({"corpus": {"path": str(folder), "rows_per_shard": rows_per_shard}})
    plan = plan_corpus(cfg, Storage.open(out))
    t0 = time.perf_counter()
    for s in plan.shards:
        for _ in read_shard(s, ["id", "text"], {}, cfg.storage):
            pass
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--rows-per-shard", type=int, default=2000)
    ap.add_argument("--base", default=str(ROOT / "out" / "bench-shapes"))
    a = ap.parse_args(argv)
    base = Path(a.base)
    layouts = write_layouts(base, a.rows, a.rows_per_shard)
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", **{KEY_ENV: KEY})
    env.pop("RAY_ADDRESS", None)
    results = {}
    settings = ServerSettings(api_keys=frozenset({KEY}), rpm=500, tpm=1_000_000, concurrency=4, burst_seconds=5,
                              latency_ms=100)
    with LocalServer.spawn(settings) as srv:
        for name, folder in layouts.items():
            out = base / f"out-{folder.name}"
            shutil.rmtree(out, ignore_errors=True)
            cfg = base / f"{folder.name}.toml"
            cfg.write_text(f'[corpus]\npath = "{folder}"\nrows_per_shard = {a.rows_per_shard}\n'
                           f'[jina]\nbase_url = "{srv.url}"\napi_key_env = "{KEY_ENV}"\ndimensions = 256\n'
                           '[limits]\nrpm = 500\ntpm = 1000000\nconcurrency = 4\n'
                           f'[ray]\nworkers = 2\n[output]\npath = "{out}"\n')
            srv.reset_stats()
            w = run_watched([sys.executable, str(ROOT / "jobs/embed.py"), str(cfg), "--no-progress"], env=env)
            if w.returncode != 0:
                raise SystemExit(f"{name}: {w.stderr[-2000:]}")
            rep = json.loads((out / "_report.json").read_text())
            st = srv.stats()
            read_s = read_cost(folder, base / f"plan-{folder.name}", a.rows_per_shard)
            results[name] = {"files": len(list(folder.glob("*.parquet"))), "shards": rep["shards_total"],
                             "requests": st["requests"], "seconds": w.seconds, "window": rep["embed_window_s"],
                             "read_s": read_s, "rows": rep["rows_embedded"]}
            print(f"{name}: {results[name]}", flush=True)
    ref = results["well-sized row groups"]
    print(f"\n{a.rows:,} rows, {a.rows_per_shard:,} per shard; server 500 RPM / 1M TPM / 4 concurrent, 100 ms latency\n")
    print("| layout | files | shards | requests | wall | embedding window | read all shards | vs well-sized (requests, wall) |")
    print("|---|---|---|---|---|---|---|---|")
    worst = 0.0
    for name, r in results.items():
        rq, wl = r["requests"] / ref["requests"], r["window"] / ref["window"]
        worst = max(worst, abs(rq - 1), abs(wl - 1))
        print(f"| {name} | {r['files']:,} | {r['shards']} | {r['requests']} | {r['seconds']:.1f} s | {r['window']:.1f} s "
              f"| {r['read_s']:.2f} s | {rq:.3f}, {wl:.3f} |")
    print(f"\nworst deviation from the well-sized layout: {worst:.1%} (target <= 10%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

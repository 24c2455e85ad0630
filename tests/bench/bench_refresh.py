"""Benchmark: a nightly refresh as a delta loaded in place vs the same refresh as today (full output, new collection).

    python tests/bench/bench_refresh.py [--rows 200000] [--dims 256] [--rows-per-shard 10000] [--port 19530]

A corpus of ``--rows`` rows is embedded (the local stand-in, real Ray) and bulk-loaded into a local Milvus server
(started in a temp dir unless one answers on ``--port``; run under ``flock /tmp/jinabatch-milvus.lock``). Then one
night changes it — 1% of rows edited, 0.5% added, 0.5% deleted — and the refresh runs both ways, each from the same
base: as a delta (output.previous, output.write = "delta") applied in place to the collection behind one alias, and
as today's full output (output.write = "full") loaded into a new collection behind another alias. Printed side by
side, with the ratio delta / full: tokens, bytes written, rows written to Milvus, embed wall and load wall. Both
refreshes send the same rows to the API (the incremental join already did); the full re-embed of the corpus is
shown for the token scale. The embed wall of both includes what no refresh can skip without a change feed:
reading and hashing every row of the corpus to find what changed (the plan's join) and the shard tasks' pass
over their rows; "of it tasks" is the shard tasks' window alone.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "lib"), str(ROOT / "tests")]
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from corpus_gen import make_corpus  # noqa: E402
from refresh_gen import evolve  # noqa: E402

from jinabatch.config import parse_config  # noqa: E402
from jinabatch.embed.driver import run_embed  # noqa: E402
from jinabatch.load.server import EmbeddedServer, milvus_answers  # noqa: E402
from jinabatch.load.stage import run_load  # noqa: E402


def config(tmp: Path, corpus: str, out: str, args, alias: str, **output) -> object:
    return parse_config({
        "corpus": {"path": str(tmp / corpus), "columns": ["title", "n", "score", "flag"],
                   "rows_per_shard": args.rows_per_shard},
        "jina": {"base_url": "local", "model": "jina-embeddings-v3", "task": "retrieval.passage",
                 "dimensions": args.dims},
        "limits": {"rpm": 1_000_000, "tpm": 2_000_000_000, "concurrency": 16},
        "ray": {"workers": 2},
        "output": {"path": str(tmp / out), **output},
        "milvus": {"uri": "embedded", "port": args.port, "data_dir": str(tmp / "milvus"), "collection": alias},
    })


def _bytes(folder: Path) -> int:
    return sum(f.stat().st_size for sub in ("shards", "dead_letter", "_delta") for f in (folder / sub).glob("*")
               if f.is_file())


def refresh(tmp: Path, args, alias: str, write: str) -> dict:
    """Embed night 1 from the base as ``write`` into its own output, then load it behind ``alias``."""
    cfg = config(tmp, "v1", f"night1-{write}", args, alias, previous=str(tmp / "base"), write=write)
    t0 = time.monotonic()
    rep = run_embed(cfg, progress=False)
    embed_s = time.monotonic() - t0
    load = run_load(cfg, progress=False)
    return {"tokens": rep.tokens, "bytes written": _bytes(tmp / f"night1-{write}"), "rows to Milvus": load.rows_sent,
            "embed wall s": round(embed_s, 2), "  of it tasks s": round(rep.embed_window_s, 2),
            "load wall s": round(load.seconds, 2), "how": load.how, "rows": load.rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--dims", type=int, default=256)
    ap.add_argument("--rows-per-shard", type=int, default=10_000)
    ap.add_argument("--port", type=int, default=19530)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import ray

    with tempfile.TemporaryDirectory(prefix="bench-refresh-") as d, contextlib.ExitStack() as stack:
        tmp = Path(d)
        if not milvus_answers(args.port):
            stack.enter_context(EmbeddedServer(tmp / "milvus", port=args.port))
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        stack.callback(ray.shutdown)
        t0 = time.monotonic()
        rows = make_corpus(tmp / "v0", files=20, rows_per_file=args.rows // 20, row_group_size=2000).rows
        evolve(rows, tmp / "v1", seed=1, edit=0.01, delete=0.005, add=0.005, first_new_id=10 ** 9,
               row_group_size=2000)
        print(f"corpus: {len(rows):,} rows, {args.dims} dims; night 1: 1% edited, 0.5% added, 0.5% deleted "
              f"({time.monotonic() - t0:.1f}s to write)", flush=True)
        base_cfg = config(tmp, "v0", "base", args, "refresh_delta")
        base = run_embed(base_cfg, progress=False)
        for alias in ("refresh_delta", "refresh_full"):  # both aliases start from the same base collection
            run_load(config(tmp, "v0", "base", args, alias), progress=False)
        print(f"base: {base.tokens:,} tokens (a full re-embed), {_bytes(tmp / 'base'):,} bytes, "
              f"{base.duration_s:.1f}s embed", flush=True)
        delta = refresh(tmp, args, "refresh_delta", "delta")
        full = refresh(tmp, args, "refresh_full", "full")
    assert delta["rows"] == full["rows"], (delta, full)
    print(f"\n{'':16}{'delta + in place':>18}{'full + new coll.':>18}{'ratio':>8}")
    for k in ("tokens", "bytes written", "rows to Milvus", "embed wall s", "  of it tasks s", "load wall s"):
        ratio = delta[k] / full[k] if full[k] else float("nan")
        print(f"{k:16}{delta[k]:>18,}{full[k]:>18,}{ratio:>8.3f}")
    print(f"{'tokens vs a full re-embed':28}{delta['tokens'] / max(1, base.tokens):>8.3f}")
    print(f"load: {delta['how']} vs {full['how']}; both end with {delta['rows']:,} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())

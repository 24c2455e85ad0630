"""Benchmark: a nightly refresh as a delta loaded in place vs the same refresh as today (full output, new collection).

    python tests/bench/bench_refresh.py [--rows 200000] [--dims 256] [--rows-per-shard 10000] [--port 19530]

A corpus of ``--rows`` rows is embedded (the local stand-in, real Ray) and bulk-loaded into a local Milvus server
(started in a temp dir unless one answers on ``--port``; run under ``flock /tmp/jinabatch-milvus.lock``). Then one
night changes it — 1% of rows edited, 0.5% added, 0.5% deleted — and the refresh runs both ways, each from the same
base: as a delta (output.previous, output.write = "delta") applied in place to the collection behind one alias, and
as today's full output (output.write = "full") loaded into a new collection behind another alias. Printed side by
side, with the ratio delta / full: tokens, bytes written, rows written to Milvus, embed wall and load wall.

The same night is first run on a corpus 100 times smaller: each path's wall there is its fixed start-up (Ray tasks,
the stand-in, the coordinator, the estimate's sample, the report), and "less start-up" is what grows with size.
Of that, "plan" is the listing, duplicate pass and the join that finds what changed — the same code in both paths,
reading every row's id and text (no change feed from the corpus) — and "tasks" the shard tasks' window. Both
refreshes send the same rows to the API (the incremental join already did); the full re-embed is shown for scale.
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
        "milvus": {"uri": "embedded", "port": args.port, "data_dir": str(args.milvus_dir), "collection": alias},
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
            "embed wall s": round(embed_s, 2), "plan s": rep.plan_s, "tasks s": round(rep.embed_window_s, 2),
            "load wall s": round(load.seconds, 2), "how": load.how, "rows": load.rows, "base tokens": 0}


def night(tmp: Path, rows: int, args, tag: str) -> tuple[dict, dict]:
    """A corpus of ``rows`` rows embedded and loaded behind two aliases, one night of changes, and that night's
    refresh both ways: (delta + in place, full + new collection)."""
    t0 = time.monotonic()
    made = make_corpus(tmp / "v0", files=20, rows_per_file=max(1, rows // 20), row_group_size=2000).rows
    evolve(made, tmp / "v1", seed=1, edit=0.01, delete=0.005, add=0.005, first_new_id=10 ** 9, row_group_size=2000)
    print(f"{tag}: {len(made):,} rows, {args.dims} dims; night 1: 1% edited, 0.5% added, 0.5% deleted "
          f"({time.monotonic() - t0:.1f}s to write)", flush=True)
    delta_alias, full_alias = f"refresh_delta_{tag}", f"refresh_full_{tag}"
    base = run_embed(config(tmp, "v0", "base", args, delta_alias), progress=False)
    for alias in (delta_alias, full_alias):  # both aliases start from the same base collection
        run_load(config(tmp, "v0", "base", args, alias), progress=False)
    print(f"{tag} base: {base.tokens:,} tokens (a full re-embed), {_bytes(tmp / 'base'):,} bytes, "
          f"{base.duration_s:.1f}s embed", flush=True)
    delta = refresh(tmp, args, delta_alias, "delta")
    full = refresh(tmp, args, full_alias, "full")
    assert delta["rows"] == full["rows"], (delta, full)
    delta["base tokens"] = full["base tokens"] = base.tokens
    return delta, full


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


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
        args.milvus_dir = tmp / "milvus"  # one server for both corpora
        if not milvus_answers(args.port):
            stack.enter_context(EmbeddedServer(args.milvus_dir, port=args.port))
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        stack.callback(ray.shutdown)
        small = max(100, args.rows // 100)  # the same night on a corpus 100 times smaller: the fixed start-up
        s_delta, s_full = night(tmp / "small", small, args, "small")
        delta, full = night(tmp / "big", args.rows, args, "big")
    for r, s in ((delta, s_delta), (full, s_full)):
        r["  start-up s"] = s["embed wall s"]
        r["  less start-up s"] = round(r["embed wall s"] - s["embed wall s"], 2)
        r["    of it plan s"] = round(r["plan s"] - s["plan s"], 2)
        r["    of it tasks s"] = round(r["tasks s"] - s["tasks s"], 2)
        r["  load start-up s"] = s["load wall s"]
        r["  load less start-up s"] = round(r["load wall s"] - s["load wall s"], 2)
    print(f"\n{'':24}{'delta + in place':>18}{'full + new coll.':>18}{'ratio':>8}")
    for k in ("tokens", "bytes written", "rows to Milvus", "embed wall s", "  start-up s", "  less start-up s",
              "    of it plan s", "    of it tasks s", "load wall s", "  load start-up s", "  load less start-up s"):
        print(f"{k:24}{delta[k]:>18,}{full[k]:>18,}{_ratio(delta[k], full[k]):>8.3f}")
    print(f"{'tokens vs a full re-embed':42}{_ratio(delta['tokens'], delta['base tokens']):>8.3f}")
    print(f"start-up: each path's wall for the same night on a {small:,}-row corpus; plan: listing, duplicate pass and "
          "the join that finds what changed (the same code in both)")
    print(f"load: {delta['how']} vs {full['how']}; both end with {delta['rows']:,} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())

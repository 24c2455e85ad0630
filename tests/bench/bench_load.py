"""Benchmark: bulk import vs batched upsert of the same shards into the same local Milvus server.

    python tests/bench/bench_load.py [--rows 100000] [--dims 1024] [--rows-per-shard 10000]

Writes an embed output folder of random unit vectors (the embed stage's shard contract), starts one
embedded Milvus server in a temp dir, runs the load stage twice — mode = "bulk" then mode = "insert",
each into its own alias — and prints both times (create + fill + index + load + verify) and their ratio.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "lib"))

from jinabatch.config import parse_config  # noqa: E402
from jinabatch.load.stage import run_load  # noqa: E402
from jinabatch.load.server import EmbeddedServer, milvus_answers  # noqa: E402

MODEL = "jina-embeddings-v3"


def write_output(path: Path, rows: int, dims: int, per_shard: int) -> None:
    rng = np.random.default_rng(0)
    (path / "shards").mkdir(parents=True)
    for shard, start in enumerate(range(0, rows, per_shard)):
        n = min(per_shard, rows - start)
        v = rng.standard_normal((n, dims), dtype=np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        emb = pa.ListArray.from_arrays(pa.array(np.arange(0, (n + 1) * dims, dims), pa.int32()),
                                       pa.array(v.reshape(-1), pa.float32()))
        t = pa.table({"id": [f"doc-{i:08d}" for i in range(start, start + n)], "embedding": emb,
                      "text": [f"synthetic row {i}" for i in range(start, start + n)]})
        meta = {"model": MODEL, "task": "retrieval.passage", "dimensions": dims, "rows": n, "shard": shard,
                "id_column": "id", "columns": ["text"]}
        pq.write_table(t.replace_schema_metadata({b"jinabatch": json.dumps(meta).encode()}),
                       path / "shards" / f"shard-{shard:05d}.parquet")
    (path / "_report.json").write_text(json.dumps({
        "rows_in": rows, "rows_embedded": rows, "rows_dead_letter": 0, "model": MODEL, "task": "retrieval.passage",
        "dimensions": dims, "id_column": "id", "columns": ["text"], "fingerprint": "bench", "finished": True}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--dims", type=int, default=1024)
    ap.add_argument("--rows-per-shard", type=int, default=10_000)
    ap.add_argument("--port", type=int, default=19530)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if milvus_answers(args.port):
        print(f"a Milvus server already runs on port {args.port}; stop it first (one embedded server per machine)")
        return 1
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        tmp = Path(tmp)
        t = time.monotonic()
        write_output(tmp / "out", args.rows, args.dims, args.rows_per_shard)
        mb = sum(f.stat().st_size for f in (tmp / "out" / "shards").glob("*.parquet")) / 2**20
        print(f"shards: {args.rows:,} rows x {args.dims} dims, {mb:,.0f} MB in "
              f"{-(-args.rows // args.rows_per_shard)} files (written in {time.monotonic() - t:.1f} s)")
        with EmbeddedServer(tmp / "milvus", args.port) as server:
            times = {}
            for mode in ("bulk", "insert"):
                cfg = parse_config({"output": {"path": str(tmp / "out")}, "jina": {"dimensions": args.dims},
                                    "milvus": {"uri": server.uri, "collection": f"bench_{mode}", "mode": mode}})
                t = time.monotonic()
                rep = run_load(cfg, progress=sys.stderr.isatty())
                times[mode] = time.monotonic() - t
                assert rep.rows == args.rows and rep.mode == mode
                print(f"{mode:>6}: {times[mode]:7.1f} s  ({args.rows / times[mode]:,.0f} rows/s, verified "
                      f"{rep.verified_ids} ids)", flush=True)
    print(f"insert / bulk time ratio: {times['insert'] / times['bulk']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

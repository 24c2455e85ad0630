"""What the stand-in's batch output costs to serve and to read (the server side of issue 21's benchmark).

    python tests/bench/bench_standin_batch.py [--rows 10000] [--dims 1024]

One batch of ``--rows`` texts of 40 words on the local server in its own process (no queue, no processing time),
downloaded twice: streamed and counted only (the server's cost: embed + orjson, in 256-row blocks), then parsed
line by line into float32 rows (the client's decode: orjson, or the stdlib json for comparison). Prints the
output size, the wall time of each and the reader's CPU seconds per 1,000 rows, and checks every row against
``fakemodel.embed``. (Not part of ``make bench``: the job's sync-vs-batch benchmark is; this isolates the stand-in.)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "lib"))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import orjson  # noqa: E402

from jinabatch.local_api import fakemodel  # noqa: E402
from jinabatch.local_api.server import LocalServer, ServerSettings  # noqa: E402

MODEL = "jina-embeddings-v5-text-small"


def _read(srv: LocalServer, bid: str, dims: int, n: int, loads) -> tuple[np.ndarray, float, float]:
    """(vectors by input index, wall s, CPU s) of one download parsed line by line."""
    out = np.empty((n, dims), np.float32)
    t, cpu = time.perf_counter(), time.process_time()
    with httpx.stream("GET", f"{srv.url}/batch/{bid}/output", headers={"Authorization": f"Bearer {srv.key}"},
                      timeout=300) as r:
        for line in r.iter_lines():
            if line:
                o = loads(line)
                out[int(o["custom_id"][8:])] = o["response"]["body"]["data"][0]["embedding"]
    return out, time.perf_counter() - t, time.process_time() - cpu


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=10_000)
    p.add_argument("--dims", type=int, default=1024)
    a = p.parse_args(argv)
    texts = [" ".join(f"w{(i * 7 + j * 13) % 5000}" for j in range(40)) for i in range(a.rows)]
    settings = ServerSettings(batch_queue_s=0, batch_processing_s=0, batch_processing_per_1000_s=0)
    with LocalServer(settings, mode="process") as srv:
        h = {"Authorization": f"Bearer {srv.key}"}
        r = httpx.post(f"{srv.url}/batch/embeddings", headers=h, timeout=120,
                       json={"model": MODEL, "input": texts, "dimensions": a.dims})
        bid = r.raise_for_status().json()["batch_id"]
        time.sleep(0.05)
        assert httpx.get(f"{srv.url}/batch/{bid}", headers=h).json()["status"] == "completed"
        t, size = time.perf_counter(), 0
        with httpx.stream("GET", f"{srv.url}/batch/{bid}/output", headers=h, timeout=300) as r:
            for chunk in r.iter_raw():
                size += len(chunk)
        serve_s = time.perf_counter() - t
        want = fakemodel.embed(MODEL, None, a.dims, texts)
        results = {"rows": a.rows, "dims": a.dims, "output_mb": round(size / 1e6, 1), "serve_s": round(serve_s, 2)}
        for name, loads in (("orjson", orjson.loads), ("json", json.loads)):
            got, wall, cpu = _read(srv, bid, a.dims, a.rows, loads)
            assert np.array_equal(got, want), f"{name}: vectors differ from fakemodel.embed"
            results[name] = {"wall_s": round(wall, 2), "cpu_s_per_1000_rows": round(cpu / a.rows * 1000, 3)}
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

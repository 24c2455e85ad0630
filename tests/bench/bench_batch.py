"""Batch benchmark (``make bench``): the same corpus through the synchronous path and through Jina's Batch
Embeddings API on the local stand-in (issue 21).

1. **End to end**: ``rows`` readable passages, jina-embeddings-v5-text-small at 1024 dims, 2 workers, one key,
   through ``jina.api = "embeddings"`` (base64) and ``"batch"`` (JSON floats; polls every 0.2-1 s against the
   stand-in's processing model: ``batch_queue_s`` + ``batch_processing_s`` + ``batch_processing_per_1000_s`` per
   1,000 inputs). Reported: wall time of ``run_embed``, HTTP requests the server saw (embedding calls vs submits +
   polls + downloads), and for batches the processing model's own time for one batch.
2. **Decode**: CPU seconds per 1,000 rows to turn the server's answer into float32 rows — a /v1/embeddings
   base64 body (``wire.decode_response``) vs the batch output JSONL (``jina.batch.read_line``, orjson), 1024 dims.
3. **Memory**: peak Python-traced memory (tracemalloc: numpy buffers included) while one 10,000 × 1024 batch
   output (~100 MB of JSON text) is downloaded and matched — the output is streamed line by line into one
   preallocated array, so the peak should be that array (~41 MB) plus a few lines, not the text.

Usage: ``python tests/bench/bench_batch.py [--rows N] [--json out.json]``
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import orjson

from jinabatch.config import parse_config
from jinabatch.embed.driver import run_embed
from jinabatch.jina.batch import BatchClient, BatchOutput, read_line
from jinabatch.jina.keys import Secret
from jinabatch.jina.wire import decode_response
from jinabatch.local_api.samples import write_corpus
from jinabatch.local_api.server import LocalServer, ServerSettings

MODEL, DIM, KEY, ENV = "jina-embeddings-v5-text-small", 1024, "bench_batch_key_0123456789", "JINABATCH_BENCH_KEY"
KNOBS = {"batch_queue_s": 1.0, "batch_processing_s": 1.0, "batch_processing_per_1000_s": 0.5}


def _config(corpus: Path, out: Path, url: str, api: str) -> object:
    jina = {"base_url": url, "api_key_env": ENV, "model": MODEL, "api": api}
    if api == "batch":
        jina["batch"] = {"poll_initial": 0.2, "poll_max": 1.0}
    return parse_config({"corpus": {"path": str(corpus), "rows_per_shard": 5000, "columns": []},
                         "jina": jina, "limits": {"rpm": 3000, "tpm": 10_000_000, "concurrency": 8},
                         "ray": {"workers": 2}, "output": {"path": str(out)}})


def end_to_end(rows: int, tmp: Path) -> dict:
    corpus = tmp / "corpus"
    write_corpus(corpus, rows, files=2)
    os.environ[ENV] = KEY
    cells = {}
    with LocalServer(ServerSettings(api_keys=frozenset({KEY}), rpm=3000, tpm=10_000_000, concurrency=8, **KNOBS),
                     mode="process") as srv:
        for api in ("embeddings", "batch"):
            before = srv.stats()
            t0 = time.monotonic()
            rep = run_embed(_config(corpus, tmp / f"out-{api}", srv.url, api), progress=False)
            wall = time.monotonic() - t0
            after = srv.stats()
            b0, b1 = before.get("batch", {}), after.get("batch", {})
            cell = {"wall_s": round(wall, 2), "rows_embedded": rep.rows_embedded,
                    "embedding_calls": after["requests"] - before["requests"]}
            if api == "batch":
                cell.update({k: b1[k] - b0.get(k, 0) for k in ("submitted", "status_polls", "downloads")})
                cell["batch_requests"] = cell["submitted"] + cell["status_polls"] + cell["downloads"]
                cell["model_s_per_batch"] = round(KNOBS["batch_queue_s"] + KNOBS["batch_processing_s"]
                                                  + KNOBS["batch_processing_per_1000_s"] * 5, 2)
            cells[api] = cell
    return cells


def _bodies(n: int, dim: int) -> tuple[bytes, list[bytes]]:
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((n, dim)).astype(np.float32)
    sync = json.dumps({"data": [{"index": i, "embedding": base64.b64encode(v.tobytes()).decode()}
                                for i, v in enumerate(vecs)], "usage": {"total_tokens": n}}).encode()
    lines = [orjson.dumps({"custom_id": f"request-{i}", "response": {"status_code": 200, "body": {
        "data": [{"embedding": v, "index": 0}], "usage": {"total_tokens": 1}}}}, option=orjson.OPT_SERIALIZE_NUMPY)
        for i, v in enumerate(vecs)]
    return sync, lines


def decode(n: int = 10_000) -> dict:
    sync, lines = _bodies(n, DIM)
    t0 = time.process_time()
    decode_response(sync, n_inputs=n, embedding_type="base64", dim=DIM)
    t_sync = time.process_time() - t0
    out = BatchOutput(np.zeros((n, DIM), np.float32), np.zeros(n, bool))
    t0 = time.process_time()
    for line in lines:
        read_line(line, out, n, DIM)
    t_batch = time.process_time() - t0
    assert out.ok.all()
    return {"rows": n, "dim": DIM, "jsonl_mb": round(sum(map(len, lines)) / 1e6, 1),
            "cpu_s_per_1000_rows_base64": round(t_sync / n * 1000, 4),
            "cpu_s_per_1000_rows_batch_jsonl": round(t_batch / n * 1000, 4)}


def memory(n: int = 10_000) -> dict:
    settings = parse_config({"jina": {"api": "batch", "model": MODEL, "batch": {"poll_initial": 0.05,
                                                                               "poll_max": 0.2}}}).jina
    with LocalServer(ServerSettings(api_keys=frozenset({KEY}), batch_queue_s=0.0, batch_processing_s=0.0,
                                    batch_processing_per_1000_s=0.0), mode="process") as srv:
        async def run() -> tuple[int, int]:
            async with BatchClient(settings, api_key=Secret(KEY), base_url=srv.url) as c:
                sub = await c.submit([f"passage number {i} about rivers and stones" for i in range(n)])
                await c.wait(sub.batch_id, sub.key)
                tracemalloc.start()
                out = await c.output(sub.batch_id, sub.key, n, DIM)
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
                assert out.ok.all()
                return peak, out.vectors.nbytes
        peak, array = asyncio.run(run())
    return {"rows": n, "dim": DIM, "peak_traced_mb": round(peak / 1e6, 1), "result_array_mb": round(array / 1e6, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--json")
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    res = {"decode": decode(), "memory": memory()}
    with tempfile.TemporaryDirectory() as tmp:
        res["end_to_end"] = end_to_end(args.rows, Path(tmp))
    print(json.dumps(res, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()

"""The body of one shard task on a Ray worker: join the coordinator, limit this worker to its share of the
key's budget, run the shard (``worker.process_shard``) and report counters back.

``shard_task`` is what the driver schedules (``ray.remote``); it turns known errors into a failed result
(typed, picklable) instead of raising, so the driver can tell a bad run from a bad shard. The API key
arrives as an object-store value (``ray.put`` in the driver), never as a task argument.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

import pyarrow as pa

from ..config import Config
from ..errors import JinaBatchError
from ..jina.limits import WorkerLimiter
from ..storage import Storage
from .plan import Shard
from .worker import ShardResult, process_shard

__all__ = ["shard_task", "request_token_budget", "BURST_SECONDS"]

BURST_SECONDS = 2.0


def request_token_budget(config: Config) -> int:
    """Tokens per request: big enough that RPM does not bind before TPM, small enough to pace smoothly."""
    lim, w = config.limits, config.ray.workers
    per_worker_burst = lim.tpm * lim.target / w / 60 * BURST_SECONDS
    return int(min(config.jina.max_tokens_per_request, max(512, min(4 * lim.tpm / lim.rpm, per_worker_burst))))


def _counters(rows: int, client) -> dict[str, int]:
    s = client.stats
    return {"rows": rows, "tokens": s.tokens, "requests": s.requests, "http_429": s.http_429, "retries": s.retries}


async def _run_shard(config: Config, shard: Shard, out: str, id_field: pa.Field, carried: list[pa.Field],
                     base_url: str, key: str, coordinator) -> ShardResult:
    import ray

    from ..jina.client import JinaClient, Secret

    share = await coordinator.register.remote(shard.index)
    budget = request_token_budget(config)
    limiter = WorkerLimiter(share, burst_seconds=BURST_SECONDS, max_request_tokens=budget,
                            start_levels=await coordinator.take_levels.remote())
    client = JinaClient(config.jina, api_key=Secret(key), base_url=base_url, limiter=limiter,
                        max_tokens_per_request=budget)
    rows = 0

    def on_rows(n: int) -> None:
        nonlocal rows
        rows += n

    async def pump() -> None:
        while True:
            await asyncio.sleep(0.5)
            limiter.set_share(await coordinator.report.remote(shard.index, _counters(rows, client)))

    t0 = time.monotonic()
    pumping = asyncio.ensure_future(pump())
    try:
        res = await process_shard(config, shard, client, Storage.open(out, config.storage), id_field=id_field,
                                  carried=carried, on_rows=on_rows)
        res.seconds = time.monotonic() - t0
        res.node = ray.get_runtime_context().get_node_id()
        return res
    finally:
        pumping.cancel()
        await coordinator.unregister.remote(shard.index, _counters(rows, client), limiter.levels())
        await client.aclose()


def shard_task(config: Config, shard: Shard, out: str, id_field: pa.Field, carried: list[pa.Field],
                base_url: str, key: str, coordinator) -> dict[str, Any]:
    """Ray task body. Known errors come back as a failed result (typed, picklable) instead of raising."""
    try:
        return vars(asyncio.run(_run_shard(config, shard, out, id_field, carried, base_url, key, coordinator)))
    except JinaBatchError as e:
        return vars(ShardResult(shard.index, shard.name, shard.rows, 0, 0, status="failed",
                                error=str(e), error_type=type(e).__name__))

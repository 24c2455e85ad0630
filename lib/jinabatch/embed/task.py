"""The body of one shard task on a Ray worker: join the coordinator, embed the shard with budget the
coordinator grants, report counters back.

``shard_task`` is what the driver schedules (``ray.remote``); it turns known errors into a failed result
(typed, picklable) instead of raising, so the driver can tell a bad run from a bad shard. The API keys
arrive as an object-store value (``ray.put`` in the driver: one key or the pool's list), never as a task
argument; the coordinator says which one this task uses (by index), and it is wrapped in ``Secret`` at once.

A *pump* coroutine runs beside the shard: while requests wait for a grant it polls the coordinator about ten
times a second with them (``GrantedLimiter.asks``), what the server billed beyond or below the estimates, the
429s and the requests that finished, per key, and hands the grants and any key's pause to the limiter; while
nothing waits it only reports progress, four times a second. A grant names the key of the pool a request goes
on (every key is in the task's hands), so a pool's keys serve any shard's requests.
"""
from __future__ import annotations

import asyncio
import math
import time

import pyarrow as pa

from ..config import Config
from ..errors import JinaBatchError
from ..storage import Storage
from ..observe.records import BatchCounts
from .batches import batch_in_flight, process_shard_batches, spend as batch_spend
from .grants import BURST_SECONDS, GrantedLimiter
from .plan import Shard
from .worker import ShardResult, process_shard, spend

__all__ = ["shard_task", "request_token_budget", "BURST_SECONDS", "POLL_MIN", "POLL_BUSY", "POLL_IDLE"]

POLL_MIN = 0.02  # seconds between two polls at least
POLL_BUSY = 0.1  # seconds between polls while requests wait for a grant (grants come at any task's poll)
POLL_IDLE = 0.25  # seconds between progress reports otherwise


def request_token_budget(config: Config, keys: int = 1) -> int:
    """Tokens per request: big enough that RPM does not bind before TPM, small enough to pace smoothly
    (at most two seconds of a worker's part of its key's TPM)."""
    lim = config.limits
    workers_per_key = max(1, math.ceil(config.ray.workers / max(1, keys)))
    per_worker_burst = lim.tpm * lim.target / workers_per_key / 60 * BURST_SECONDS
    return int(min(config.jina.max_tokens_per_request, max(512, min(4 * lim.tpm / lim.rpm, per_worker_burst))))


def _counters(rows: int, client) -> dict[str, int]:
    s = client.stats
    return {"rows": rows, "tokens": s.tokens, "requests": s.requests, "http_429": s.http_429, "retries": s.retries}


async def _run_shard(config: Config, shard: Shard, out: str, id_field: pa.Field, carried: list[pa.Field],
                     base_url: str, keys: list[str], coordinator) -> ShardResult:
    import ray

    from ..jina.batch import BatchClient
    from ..jina.client import JinaClient
    from ..jina.keys import KeyPool, Secret

    seat = await coordinator.register.remote(shard.index, len(keys))
    budget = request_token_budget(config, len(keys))
    need = asyncio.Event()
    limiter = GrantedLimiter(max_asks=seat["slots"], max_request_tokens=budget, on_need=need.set)
    i, envs = seat["key"], config.jina.api_key_env
    pool = KeyPool([Secret(k, name=envs[j] if len(envs) == len(keys) else None, label=f"key{j}")  # names its variable
                    for j, k in enumerate(keys)])
    if config.jina.api == "batch":
        client = BatchClient(config.jina, api_key=pool, base_url=base_url, limiter=limiter)
    else:
        client = JinaClient(config.jina, api_key=pool, base_url=base_url, limiter=limiter,
                            max_tokens_per_request=budget)
    rows = 0

    def on_rows(n: int) -> None:
        nonlocal rows
        rows += n

    async def pump() -> None:
        while True:
            need.clear()
            reply = await coordinator.poll.remote(shard.index, _counters(rows, client), limiter.asks(),
                                                  limiter.take_settlement(), limiter.done(), limiter.by_key(),
                                                  limiter.take_refusals(), limiter.last_retry_after)
            for key, seconds in reply["pause"].items():
                limiter.pause(key, seconds)
            limiter.grant(reply["granted"])
            await asyncio.sleep(POLL_MIN)  # the granted requests go; at most 1 / POLL_MIN polls a second
            try:  # a finished or a new request reports at once: the coordinator frees its slot, lines it up
                await asyncio.wait_for(need.wait(), POLL_BUSY if limiter.asks() else POLL_IDLE)
            except asyncio.TimeoutError:
                pass

    t0 = time.monotonic()
    counts = BatchCounts() if config.jina.api == "batch" else None  # kept when the shard fails
    pumping = asyncio.ensure_future(pump())
    working = asyncio.ensure_future(_process(config, shard, client, Storage.open(out, config.storage), id_field,
                                             carried, on_rows, len(keys), counts))
    try:
        await asyncio.wait({pumping, working}, return_when=asyncio.FIRST_COMPLETED)
        if not working.done():  # the pump died (the coordinator is gone): nothing would be granted any more
            working.cancel()
            pumping.result()
        try:
            res = working.result()
        except JinaBatchError as e:  # a failed shard still reports what it spent (and its batches)
            res = _failed(shard, e, client, counts)
        res.seconds = time.monotonic() - t0
        res.node = ray.get_runtime_context().get_node_id()
        res.key = f"key{i}"  # which key of the pool (the run log records it)
        return res
    finally:
        for t in (pumping, working):
            t.cancel()
        await coordinator.unregister.remote(shard.index, _counters(rows, client), limiter.by_key(),
                                            *limiter.unspent())
        await client.aclose()


def _process(config: Config, shard: Shard, client, out: Storage, id_field: pa.Field, carried: list[pa.Field],
             on_rows, keys: int, counts: BatchCounts | None):
    """The shard's coroutine: through batches (``jina.api = "batch"``, counted into ``counts``) or synchronous
    requests."""
    if config.jina.api == "batch":
        return process_shard_batches(config, shard, client, out, id_field=id_field, carried=carried, on_rows=on_rows,
                                     in_flight=asyncio.Semaphore(batch_in_flight(config, keys)), counts=counts)
    return process_shard(config, shard, client, out, id_field=id_field, carried=carried, on_rows=on_rows)


def _failed(shard: Shard, e: JinaBatchError, client, counts: BatchCounts | None) -> ShardResult:
    """The failed result of ``shard`` with what its client spent before ``e`` (and its batches' counts)."""
    res = ShardResult.failed(shard, e)
    if counts is not None:
        res.batches = counts
        batch_spend(res, client)
    else:
        spend(res, client)
    return res


def shard_task(config: Config, shard: Shard, out: str, id_field: pa.Field, carried: list[pa.Field],
               base_url: str, key: str | list[str], coordinator) -> ShardResult:
    """Ray task body. Known errors come back as a failed result carrying the error (picklable) instead of raising."""
    keys = [key] if isinstance(key, str) else list(key)
    try:
        return asyncio.run(_run_shard(config, shard, out, id_field, carried, base_url, keys, coordinator))
    except JinaBatchError as e:
        return ShardResult.failed(shard, e)

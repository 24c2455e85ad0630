"""The coordinator: a Ray actor (``num_cpus=0``) holding the key's budget for the shard tasks.

``remaining`` (shards queued or running, set by the driver) decides how many workers share the budget:
``min(workers, remaining)``, so when the last shards run alone they take the freed share. Each task
registers, polls its share every half second while reporting its counters, and applies the share to its
``WorkerLimiter``. A new task starts with the bucket levels a finished one left (refilled since), so task
churn does not create bursts. Counters of an attempt whose worker died are kept (its spend was real).
"""
from __future__ import annotations

import time

from ..jina.limits import Share, share_of

__all__ = ["Coordinator"]


class Coordinator:
    """Ray actor: the shared budget, who is running, and progress for the driver's bar."""

    def __init__(self, rpm: int, tpm: int, concurrency: int, workers: int, target: float):
        self.limits = (rpm, tpm, concurrency)
        self.workers, self.target = workers, target
        self.remaining = workers  # until the driver says: a worker that registers first must not get the whole key
        self.running: dict[int, dict[str, int]] = {}  # shard -> live counters of its current attempt
        self.finished = {"rows": 0, "tokens": 0, "requests": 0, "http_429": 0, "retries": 0}
        self.levels: list[tuple[float, float, float]] = []  # unused budget left by finished workers

    def take_levels(self) -> tuple[float, float]:
        """Budget a new worker starts with: what a finished one left (refilled since), else empty."""
        if not self.levels:
            return 0.0, 0.0
        req, tok, t = self.levels.pop()
        share = self.share(-1)
        dt = time.time() - t
        return req + dt * share.rpm / 60, tok + dt * share.tpm / 60

    def set_remaining(self, n: int) -> None:
        self.remaining = n

    def share(self, shard: int) -> Share:
        active = max(1, min(self.workers, self.remaining or 1))
        ranks = sorted(self.running)
        rank = ranks.index(shard) if shard in ranks else 0
        return share_of(*self.limits, active=active, rank=rank, target=self.target)

    def register(self, shard: int) -> Share:
        dead = self.running.get(shard)  # an attempt whose worker died: its spend was real, its rows are redone
        if dead:
            for k, v in dead.items():
                self.finished[k] += 0 if k == "rows" else v
        self.running[shard] = {k: 0 for k in self.finished}
        return self.share(shard)

    def report(self, shard: int, counters: dict[str, int]) -> Share:
        if shard in self.running:
            self.running[shard] = counters
        return self.share(shard)

    def unregister(self, shard: int, counters: dict[str, int], levels: tuple[float, float] | None = None) -> None:
        self.running.pop(shard, None)
        if levels is not None:
            self.levels.append((*levels, time.time()))
        for k, v in counters.items():
            self.finished[k] += v

    def totals(self) -> dict[str, int]:
        t = dict(self.finished)
        for c in self.running.values():
            for k, v in c.items():
                t[k] += v
        return t

"""The coordinator: a Ray actor (``num_cpus=0``) that holds each key's budget and grants it to shard tasks.

Every key of the pool has one ``KeyBudget`` (``jinabatch.embed.grants``): the job's pace (``[limits]`` ×
``limits.target``, empty at the start) and a model of the server's bucket, and one line of the requests its
tasks want to send, granted whole, first come first served. A shard task registers (and is given the key with
the fewest running tasks), then polls about ten times a second while it has requests waiting: it reports the
requests a free slot would let start, what the server billed beyond or below the estimates, and its 429s; it
gets back the grants made to it, its concurrency cap and any key-wide pause. Whatever the key holds goes to the
request first in line, whichever task it belongs to, so a task that is starting, draining its last requests or
writing its shard leaves the budget to the others at once, and the last shards of a run get the whole key
without waiting for the driver. A task that ends gives back what it was granted and did not send.

Concurrency is split among the tasks of a key that have requests waiting (integers adding up to the key's
limit), and a task's cap only grows into slots the others are known to have let go (their last reported
requests in flight or their last cap, whichever is larger), so the key's limit holds while caps move.

Counters of an attempt whose worker died are kept (its spend was real); totals are per key too (``key0``,
``key1``…: keys are named by their index, never by value).
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..jina.limits import share_of
from .grants import BURST_SECONDS, Grant, KeyBudget

__all__ = ["Coordinator", "KeyBudget", "BURST_SECONDS"]

COUNTERS = ("rows", "tokens", "requests", "http_429", "retries")
STALE_S = 30.0  # a task that has not polled for this long is gone (tasks poll at least 4 times a second)


@dataclass
class _Task:
    key: int
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    cap: int = 0  # concurrency cap last given
    in_flight: int = 0
    waiting: int = 0
    seen: float = 0.0  # last register or poll


class Coordinator:
    """Ray actor: the keys' budgets, which task runs on which key, and progress for the driver's bar."""

    def __init__(self, rpm: int, tpm: int, concurrency: int, workers: int, target: float, *,
                 keys: int | None = None, burst_seconds: float = BURST_SECONDS, clock=time.monotonic):
        self.limits = (rpm, tpm, concurrency)
        self.workers, self.target = workers, target
        self.burst_seconds = burst_seconds
        self._clock = clock
        self.remaining = workers  # shards queued or running, as the driver last said (for information)
        self.keys: list[KeyBudget] = []
        self.key_counters: list[dict[str, int]] = []  # of finished attempts, per key
        if keys:
            self._ensure_keys(keys)
        self.running: dict[int, _Task] = {}  # shard -> its current attempt

    def _ensure_keys(self, n: int) -> None:
        while len(self.keys) < n:
            self.keys.append(KeyBudget(*self.limits, self.target, burst_seconds=self.burst_seconds, clock=self._clock))
            self.key_counters.append(dict.fromkeys(COUNTERS, 0))

    def set_remaining(self, n: int) -> None:
        self.remaining = n

    # -- tasks -----------------------------------------------------------------------------------
    def register(self, shard: int, keys: int = 1) -> dict[str, Any]:
        """A shard task starts: pick its key (fewest running tasks, then lowest index); its first cap."""
        self._ensure_keys(keys)
        dead = self.running.pop(shard, None)  # an attempt whose worker died: its spend was real, rows redone
        if dead is not None:
            self._fold(dead, rows=False)
            self.keys[dead.key].drop(shard)
        load = [0] * len(self.keys)
        for t in self.running.values():
            load[t.key] += 1
        key = min(range(keys), key=lambda k: (load[k], k))
        task = self.running[shard] = _Task(key, seen=self._clock())
        task.cap = self._cap(shard, starting=True)  # its first requests are coming: free slots are its to take
        return {"key": key, "concurrency": task.cap}

    def poll(self, shard: int, counters: dict[str, int], asks: Sequence[Grant] = (), settled: float = 0.0,
             in_flight: int = 0, waiting: int = 0, refused: Sequence[float] = (),
             retry_after: float | None = None) -> dict[str, Any]:
        """A task reports and asks.

        ``asks``: (ticket, estimated tokens) of the requests it could start now; ``settled``: tokens billed
        beyond its grants (negative: given back); ``refused``: the tokens of each request answered 429 since its
        last poll, with the last ``retry_after``. Returns ``granted`` (ticket, tokens), its concurrency cap and
        the key's pause (seconds)."""
        task = self.running.get(shard)
        if task is None:  # not registered (a stale attempt): nothing to give
            return {"granted": [], "concurrency": 0, "pause": 0.0}
        task.counters, task.in_flight, task.waiting = dict(counters), in_flight, waiting
        task.seen = self._clock()
        kb = self.keys[task.key]
        kb.settle(settled)
        for tokens in refused:
            kb.rate_limited(retry_after, tokens)
        task.cap = self._cap(shard)
        kb.ask(shard, asks)
        kb.grant()
        return {"granted": kb.take_granted(shard), "concurrency": task.cap, "pause": kb.pause_left()}

    def unregister(self, shard: int, counters: dict[str, int], unspent: float = 0.0) -> None:
        """A task ends: its counters are final; what it was granted and did not send goes back to its key."""
        task = self.running.pop(shard, None)
        if task is None:
            return
        task.counters = dict(counters)
        self._fold(task, rows=True)
        kb = self.keys[task.key]
        kb.drop(shard)
        kb.settle(-unspent)

    def _fold(self, task: _Task, *, rows: bool) -> None:
        kc = self.key_counters[task.key]
        for k, v in task.counters.items():
            if k != "rows" or rows:
                kc[k] += v

    def _cap(self, shard: int, *, starting: bool = False) -> int:
        """Concurrency cap of ``shard``: its part among the key's tasks with requests waiting, within free slots.

        A task silent for ``STALE_S`` (its worker died and Ray gave up on the shard) holds no slots."""
        task = self.running[shard]
        limit = self.keys[task.key].concurrency
        now = self._clock()
        peers = sorted(s for s, t in self.running.items()
                       if t.key == task.key and (s == shard or now - t.seen < STALE_S))
        asking = [s for s in peers if self.running[s].waiting > 0 or (s == shard and starting)]
        if shard in asking:
            fair = share_of(0, 0, limit, active=len(asking), rank=asking.index(shard)).concurrency
        else:
            fair = task.in_flight  # nothing waiting: keep what is in flight, free the rest
        held = sum(max(self.running[s].cap, self.running[s].in_flight) for s in peers if s != shard)
        return max(0, min(fair, limit - held))

    # -- progress --------------------------------------------------------------------------------
    def totals(self) -> dict[str, Any]:
        """Counters of every attempt so far (finished, running and dead), in all and per key."""
        per_key = [dict(c) for c in self.key_counters]
        for t in self.running.values():
            for k, v in t.counters.items():
                per_key[t.key][k] += v
        total = dict.fromkeys(COUNTERS, 0)
        for c in per_key:
            for k in COUNTERS:
                total[k] += c[k]
        total["keys"] = {f"key{i}": c for i, c in enumerate(per_key)}
        return total

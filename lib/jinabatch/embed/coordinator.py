"""The coordinator: a Ray actor (``num_cpus=0``) that holds each key's budget and grants it to shard tasks.

Every key of the pool has one ``KeyBudget``: a request bucket and a token bucket refilling at the key's
``[limits]`` × ``limits.target``, holding at most ``BURST_SECONDS`` of it, empty when the first request asks (so the job
never starts with a burst above the key's rate). A shard task registers (and is given the key with the fewest
running tasks), then polls about ten times a second while it has requests waiting: it says what they lack
(``WorkerLimiter.demand``) and gets a grant from its key's buckets, its concurrency cap and any key-wide
pause. Whatever the buckets hold goes to whoever asks, so a task that is starting, draining its last
requests or writing its shard leaves its part of the budget to the others at once, and the last shards of a
run get the whole key without waiting for the driver. A task that ends hands back what it did not spend.

Concurrency is split among the tasks of a key that have requests waiting (integers adding up to the key's
limit), and a task's cap only grows into slots the others are known to have let go (their last reported
requests in flight or their last cap, whichever is larger), so the key's limit holds while caps move.

A 429 reported by any task slows its whole key: rates × 0.7 (once a second at most, recovering 5% a
second), buckets emptied, every task of the key paused for Retry-After.

Counters of an attempt whose worker died are kept (its spend was real); totals are per key too (``key0``,
``key1``…: keys are named by their index, never by value).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ..jina.limits import TokenBucket, share_of

__all__ = ["Coordinator", "KeyBudget", "BURST_SECONDS"]

BURST_SECONDS = 2.0  # the buckets we assume the API keeps: the shortest a real server is likely to use
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


class KeyBudget:
    """One key's budget: RPM and TPM buckets at ``target`` of the limits, a concurrency limit, AIMD on 429."""

    def __init__(self, rpm: float, tpm: float, concurrency: int, target: float, *,
                 burst_seconds: float = BURST_SECONDS, clock=time.monotonic):
        self.rpm, self.tpm, self.concurrency, self.target = rpm, tpm, concurrency, target
        self.burst_seconds = burst_seconds
        self._clock = clock
        self.factor = 1.0
        self._factor_t = clock()
        self._last_cut = -1e9
        self.paused_until = 0.0
        self.started = False
        self.requests = TokenBucket(1, 1, level=0, clock=clock)
        self.tokens = TokenBucket(1, 1, level=0, clock=clock)
        self._apply()
        self.counters = dict.fromkeys(COUNTERS, 0)  # of finished attempts on this key

    def _apply(self) -> None:
        f = self.target * self.factor / 60
        for bucket, per_min in ((self.requests, self.rpm), (self.tokens, self.tpm)):
            bucket.set_rate(per_min * f, max(1.0, per_min * f * self.burst_seconds))

    def _recover(self) -> None:
        now = self._clock()
        if self.factor < 1.0 and now >= self.paused_until:
            self.factor = min(1.0, self.factor + (now - self._factor_t) * 0.05)
            self._apply()
        self._factor_t = now

    def grant(self, want_requests: float, want_tokens: float) -> tuple[float, float]:
        """Take up to what is asked from the buckets (never below empty); nothing while paused."""
        if not self.started:  # the budget accrues from the first request on: one request's worth, then the rate
            self.started = True
            one = want_tokens / max(1.0, want_requests)
            self.requests = TokenBucket(self.requests.rate, self.requests.capacity, level=1, clock=self._clock)
            self.tokens = TokenBucket(self.tokens.rate, self.tokens.capacity, level=min(one, self.tokens.capacity),
                                      clock=self._clock)
        self._recover()
        if self._clock() < self.paused_until:
            return 0.0, 0.0
        self.requests._refill()
        self.tokens._refill()
        r = min(want_requests, max(0.0, self.requests.level))
        t = min(want_tokens, max(0.0, self.tokens.level))
        self.requests.level -= r
        self.tokens.level -= t
        return r, t

    def give_back(self, requests: float, tokens: float) -> None:
        """What a task did not spend (negative: what it spent beyond its grants, settled after the fact)."""
        self.requests.give(requests)
        self.tokens.give(tokens)

    def rate_limited(self, retry_after: float | None) -> None:
        now = self._clock()
        self.paused_until = max(self.paused_until, now + (retry_after or 1.0))
        if now - self._last_cut >= 1.0:  # one cut per episode: the 429s of one moment are one signal
            self._last_cut = now
            self.factor = max(0.1, self.factor * 0.7)
            self._factor_t = now
            self._apply()
            self.requests.level = min(self.requests.level, 0.0)
            self.tokens.level = min(self.tokens.level, 0.0)

    def pause_left(self) -> float:
        return max(0.0, self.paused_until - self._clock())


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
        if keys:
            self._ensure_keys(keys)
        self.running: dict[int, _Task] = {}  # shard -> its current attempt

    def _ensure_keys(self, n: int) -> None:
        while len(self.keys) < n:
            self.keys.append(KeyBudget(*self.limits, self.target, burst_seconds=self.burst_seconds, clock=self._clock))

    def set_remaining(self, n: int) -> None:
        self.remaining = n

    # -- tasks -----------------------------------------------------------------------------------
    def register(self, shard: int, keys: int = 1) -> dict[str, Any]:
        """A shard task starts: pick its key (fewest running tasks, then lowest index); its first cap."""
        self._ensure_keys(keys)
        dead = self.running.pop(shard, None)  # an attempt whose worker died: its spend was real, rows redone
        if dead is not None:
            self._fold(dead, rows=False)
        load = [0] * len(self.keys)
        for t in self.running.values():
            load[t.key] += 1
        key = min(range(keys), key=lambda k: (load[k], k))
        task = self.running[shard] = _Task(key, seen=self._clock())
        task.cap = self._cap(shard, starting=True)  # its first requests are coming: free slots are its to take
        return {"key": key, "concurrency": task.cap}

    def poll(self, shard: int, counters: dict[str, int], want_requests: float = 0.0, want_tokens: float = 0.0,
             in_flight: int = 0, waiting: int = 0, new_429: int = 0,
             retry_after: float | None = None) -> dict[str, Any]:
        """A task reports and asks: returns its grant, concurrency cap and the key's pause (seconds)."""
        task = self.running.get(shard)
        if task is None:  # not registered (a stale attempt): nothing to give
            return {"requests": 0.0, "tokens": 0.0, "concurrency": 0, "pause": 0.0}
        task.counters, task.in_flight, task.waiting = dict(counters), in_flight, waiting
        task.seen = self._clock()
        kb = self.keys[task.key]
        if new_429:
            kb.rate_limited(retry_after)
        task.cap = self._cap(shard)
        r, t = kb.grant(want_requests, want_tokens) if (want_requests or want_tokens) else (0.0, 0.0)
        return {"requests": r, "tokens": t, "concurrency": task.cap, "pause": kb.pause_left()}

    def unregister(self, shard: int, counters: dict[str, int], levels: tuple[float, float] | None = None) -> None:
        """A task ends: its counters are final, what it did not spend goes back to its key."""
        task = self.running.pop(shard, None)
        if task is None:
            return
        task.counters = dict(counters)
        self._fold(task, rows=True)
        if levels is not None:
            self.keys[task.key].give_back(*levels)

    def _fold(self, task: _Task, *, rows: bool) -> None:
        kc = self.keys[task.key].counters
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
        per_key = [dict(kb.counters) for kb in self.keys]
        for t in self.running.values():
            for k, v in t.counters.items():
                per_key[t.key][k] += v
        total = dict.fromkeys(COUNTERS, 0)
        for c in per_key:
            for k in COUNTERS:
                total[k] += c[k]
        total["keys"] = {f"key{i}": c for i, c in enumerate(per_key)}
        return total

"""The coordinator: a Ray actor (``num_cpus=0``) that holds the keys' budget and grants it to shard tasks.

The keys of the pool (one, or one per variable of ``jina.api_key_env``) and the line of the requests the tasks
want to send form one ``Pool`` (``jinabatch.embed.grants``): each request is granted whole, first come first
served, on a key whose pace, modelled server bucket and free slots can take it — the task's own key first, any
other when that one cannot. A shard task registers (and is given the key with the fewest running tasks: its
own, and the one its report line names), then polls about ten times a second while it has requests waiting:
it reports them, what the server billed beyond or below the estimates, per key, its 429s and how many of its
requests have finished, and gets back the grants made to it and any key's pause. Whatever a key holds goes to
the request first in line, whichever task it belongs to, so a task that is starting, draining its last
requests or writing its shard leaves the budget to the others at once, and the last shards of a run get every
key without waiting for the driver. A task that ends gives back what it was granted and did not send.

Counters of an attempt whose worker died are kept (its spend was real); totals are per key too (``key0``,
``key1``…: keys are named by their index, never by value): tokens, requests and 429s by the key each request
went on, rows and retries by the key of the request's shard.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .grants import BURST_SECONDS, Ask, KeyBudget, Pool

__all__ = ["Coordinator", "KeyBudget", "BURST_SECONDS"]

COUNTERS = ("rows", "tokens", "requests", "http_429", "retries")
BY_KEY = ("tokens", "requests", "http_429")  # counted per key a request went on (the rest per shard)


@dataclass
class _Task:
    key: int  # the key its shard was given
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    by_key: dict[int, dict[str, int]] = field(default_factory=dict)  # key -> BY_KEY counters of its requests


class Coordinator:
    """Ray actor: the keys' budgets, the line of requests, which task runs on which key, progress for the driver."""

    def __init__(self, rpm: int, tpm: int, concurrency: int, workers: int, target: float, *,
                 keys: int | None = None, burst_seconds: float = BURST_SECONDS, clock=time.monotonic):
        self.limits = (rpm, tpm, concurrency)
        self.workers, self.target = workers, target
        self.burst_seconds = burst_seconds
        self._clock = clock
        self.remaining = workers  # shards queued or running, as the driver last said (for information)
        self.pool = Pool([], clock=clock)
        self.key_counters: list[dict[str, int]] = []  # of finished attempts, per key
        if keys:
            self._ensure_keys(keys)
        self.running: dict[int, _Task] = {}  # shard -> its current attempt

    @property
    def keys(self) -> list[KeyBudget]:
        return self.pool.keys

    def _ensure_keys(self, n: int) -> None:
        while len(self.pool.keys) < n:
            self.pool.keys.append(KeyBudget(*self.limits, self.target, burst_seconds=self.burst_seconds,
                                            clock=self._clock))
            self.key_counters.append(dict.fromkeys(COUNTERS, 0))

    def set_remaining(self, n: int) -> None:
        self.remaining = n

    # -- tasks -----------------------------------------------------------------------------------
    def register(self, shard: int, keys: int = 1) -> dict[str, Any]:
        """A shard task starts: its key (fewest running tasks, then lowest index) and the pool's size."""
        self._ensure_keys(keys)
        dead = self.running.pop(shard, None)  # an attempt whose worker died: its spend was real, rows redone
        if dead is not None:
            self._fold(dead, rows=False)
            self.pool.leave(shard)
        load = [0] * len(self.keys)
        for t in self.running.values():
            load[t.key] += 1
        key = min(range(keys), key=lambda k: (load[k], k))
        self.running[shard] = _Task(key)
        self.pool.join(shard, key)
        return {"key": key, "slots": sum(kb.concurrency for kb in self.keys)}

    def poll(self, shard: int, counters: dict[str, int], asks: Sequence[Ask] = (),
             settled: dict[int, float] | None = None, done: dict[int, int] | None = None,
             by_key: dict[int, dict[str, int]] | None = None, refused: Sequence[tuple[float, int]] = (),
             retry_after: float | None = None) -> dict[str, Any]:
        """A task reports and asks.

        ``asks``: (ticket, estimated tokens) of its waiting requests; ``settled``: per key, tokens billed beyond
        its grants (negative: given back); ``done``: per key, its requests finished or given back (cumulative);
        ``by_key``: per key, the tokens, requests and 429s of its requests there (cumulative); ``refused``:
        (tokens, key) of each request answered 429 since its last poll, with the last ``retry_after``. Returns
        ``granted`` (ticket, tokens, key) and ``pause``: seconds each paused key has left."""
        task = self.running.get(shard)
        if task is None:  # not registered (a stale attempt): nothing to give
            return {"granted": [], "pause": {}}
        self._update(task, counters, by_key)
        for key, tokens in (settled or {}).items():
            self.keys[key].settle(tokens)
        for tokens, key in refused:
            self.keys[key].rate_limited(retry_after, tokens)
        self.pool.report(shard, done or {})
        self.pool.ask(shard, asks)
        self.pool.grant()
        return {"granted": self.pool.take_granted(shard),
                "pause": {k: left for k, kb in enumerate(self.keys) if (left := kb.pause_left()) > 0}}

    def unregister(self, shard: int, counters: dict[str, int], by_key: dict[int, dict[str, int]] | None = None,
                   settled: dict[int, float] | None = None, done: dict[int, int] | None = None) -> None:
        """A task ends: its counters are final; what it was granted and did not send goes back to the keys."""
        task = self.running.pop(shard, None)
        if task is None:
            return
        self._update(task, counters, by_key)
        self._fold(task, rows=True)
        for key, tokens in (settled or {}).items():
            self.keys[key].settle(tokens)
        self.pool.report(shard, done or {})
        self.pool.leave(shard)

    @staticmethod
    def _update(task: _Task, counters: dict[str, int], by_key: dict[int, dict[str, int]] | None) -> None:
        task.counters = dict(counters)
        if by_key is not None:
            task.by_key = {int(k): dict(v) for k, v in by_key.items()}

    def _fold(self, task: _Task, *, rows: bool) -> None:
        for k, v in self._split(task).items():
            kc = self.key_counters[k]
            for name, n in v.items():
                if name != "rows" or rows:
                    kc[name] += n

    @staticmethod
    def _split(task: _Task) -> dict[int, dict[str, int]]:
        """A task's counters by key: rows and retries on its own key, the rest where its requests went
        (all on its own key when it reported no split)."""
        if not task.by_key:
            return {task.key: dict(task.counters)}
        out = {task.key: {"rows": task.counters.get("rows", 0), "retries": task.counters.get("retries", 0)}}
        for k, c in task.by_key.items():
            dst = out.setdefault(k, {})
            for name in BY_KEY:
                dst[name] = dst.get(name, 0) + c.get(name, 0)
        return out

    # -- progress --------------------------------------------------------------------------------
    def totals(self) -> dict[str, Any]:
        """Counters of every attempt so far (finished, running and dead), in all and per key."""
        per_key = [dict(c) for c in self.key_counters]
        for t in self.running.values():
            for k, v in self._split(t).items():
                for name, n in v.items():
                    per_key[k][name] += n
        total = dict.fromkeys(COUNTERS, 0)
        for c in per_key:
            for k in COUNTERS:
                total[k] += c[k]
        total["keys"] = {f"key{i}": c for i, c in enumerate(per_key)}
        return total

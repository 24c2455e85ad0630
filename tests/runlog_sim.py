"""Drive a ``RunLog`` the way the driver does, on a fake clock: shards started and finished by ``workers``
slots, the coordinator's cumulative totals ticked every 0.5 s. Deterministic, no sleeping."""
from __future__ import annotations

from dataclasses import dataclass, field

from jinabatch.observe.runlog import RunLog

LIMITS = {"rpm": 600, "tpm": 600_000, "concurrency": 8}
T0 = 1_780_000_000.0


class Clock:
    def __init__(self, t: float = T0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def meta(shards: int, rows_per_shard: int, *, keys: int = 1, price: float | None = 0.02) -> dict:
    return {"fingerprint": "f" * 16, "embedding": {"model": "jina-embeddings-v3", "dimensions": 64},
            "limits": LIMITS, "keys": [f"key{i}" for i in range(keys)], "price_per_million_tokens": price,
            "workers": 4, "plan": {"files": 2, "shards_total": shards, "rows_total": shards * rows_per_shard,
                                   "estimate": {"tokens": shards * rows_per_shard * 50, "seconds": 100.0}}}


@dataclass
class Sim:
    """``shards`` shards of ``rows`` rows, each taking ``seconds`` on one of ``workers`` slots; every 0.5 s
    the totals grow by the rows/tokens/requests of the running shards. Shard ``fail`` fails."""
    runlog: RunLog
    clock: Clock
    shards: int
    rows: int = 100
    seconds: float = 10.0
    workers: int = 4
    tokens_per_row: int = 50
    fail: set[int] = field(default_factory=set)
    skipped: int = 0
    keys: int = 1
    totals: dict = field(default_factory=lambda: {"rows": 0, "tokens": 0, "requests": 0, "http_429": 0, "retries": 0})
    done: list = field(default_factory=list)

    def start(self) -> None:
        self.runlog.start([{"shard": i, "name": f"shard-{i:05d}", "rows_in": self.rows, "rows_embedded": self.rows,
                            "rows_dead_letter": 0} for i in range(self.skipped)])
        self.queue = list(range(self.skipped, self.shards))
        self.running: dict[int, float] = {}

    def per_key(self) -> dict:
        return {f"key{k}": {c: v // self.keys + (v % self.keys if k == 0 else 0) for c, v in self.totals.items()}
                for k in range(self.keys)}

    def step(self) -> None:
        while self.queue and len(self.running) < self.workers:
            s = self.queue.pop(0)
            self.runlog.shard_started(s, f"shard-{s:05d}")
            self.running[s] = self.clock.t + self.seconds
        self.clock.t += 0.5
        steps = self.seconds / 0.5
        n = len(self.running)
        self.totals["rows"] += round(n * self.rows / steps)
        self.totals["tokens"] += round(n * self.rows * self.tokens_per_row / steps)
        self.totals["requests"] += n
        if int(self.clock.t * 2) % 97 == 0:
            self.totals["http_429"] += 1
            self.totals["retries"] += 1
        for s, end in sorted(self.running.items()):
            if self.clock.t >= end:
                del self.running[s]
                ok = s not in self.fail
                self.runlog.shard_finished({
                    "shard": s, "name": f"shard-{s:05d}", "status": "done" if ok else "failed",
                    "rows_in": self.rows, "rows_embedded": self.rows - 1 if ok else 0,
                    "rows_dead_letter": 1 if ok else 0, "tokens": self.rows * self.tokens_per_row,
                    "requests": int(steps), "http_429": 0, "retries": 0, "node": f"node{s % 2}" * 8,
                    "key": f"key{s % self.keys}", "seconds": self.seconds, "error": None if ok else "boom"})
                self.done.append(s)
        self.runlog.tick(dict(self.totals), self.per_key(), len(self.running))

    def run(self, until_done: int | None = None) -> None:
        """Step until ``until_done`` shards finished (all of them by default)."""
        target = (self.shards - self.skipped) if until_done is None else until_done
        while len(self.done) < target:
            self.step()

    def report(self) -> dict:
        ok = [s for s in self.done if s not in self.fail]
        return {"rows_in": self.rows * (len(self.done) + self.skipped),
                "rows_embedded": (self.rows - 1) * len(ok) + self.rows * self.skipped,
                "rows_dead_letter": len(ok), "tokens": self.totals["tokens"], "requests": self.totals["requests"],
                "http_429": self.totals["http_429"], "retries": self.totals["retries"], "shards_total": self.shards,
                "shards_done": len(ok), "shards_skipped": self.skipped, "shards_failed": len(self.fail),
                "limits": LIMITS, "model": "jina-embeddings-v3", "dimensions": 64, "task": "retrieval.passage",
                "embedding_type": "base64", "workers": self.workers, "duration_s": self.clock.t - T0,
                "embed_window_s": self.clock.t - T0, "utilization": 0.5, "binding_limit": "tpm",
                "tokens_per_min": 1.0, "requests_per_min": 1.0, "finished": not self.fail, "output": "sim"}


def simulate(out, shards: int, *, clock: Clock | None = None, **kw) -> Sim:
    clock = clock or Clock()
    opts = {k: kw.pop(k) for k in ("sample_seconds", "flush_seconds", "manifest_seconds", "compact_every") if k in kw}
    sim = Sim(RunLog(out, meta(shards, kw.get("rows", 100), keys=kw.get("keys", 1),
                               price=kw.pop("price", 0.02)), clock=clock, **opts), clock, shards, **kw)
    sim.start()
    return sim

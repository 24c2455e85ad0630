"""Per-key rate limits of the local server: RPM and TPM token buckets plus an in-flight cap.

A bucket refills at ``limit / 60`` per second up to ``capacity = limit * burst_seconds / 60``
and starts full (``start_level``: another fraction of the capacity). A request is admitted when
every bucket holds its cost; one that costs more than a bucket's capacity is admitted only when
that bucket is full, and drives it negative (so a huge request is possible but pays for itself in
waiting time afterwards). Admission is all or nothing:
a refused request consumes no budget. ``Retry-After`` is the longest time any bucket needs to
refill its deficit, rounded up to whole seconds (at least 1).

Everything runs on the server's event loop, so no locks are needed.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

__all__ = ["TokenBucket", "KeyLimiter", "Refusal"]


class TokenBucket:
    def __init__(self, limit_per_minute: float, burst_seconds: float = 60.0, clock=time.monotonic, *,
                 start_level: float = 1.0):
        self.rate = limit_per_minute / 60.0
        self.capacity = max(limit_per_minute * burst_seconds / 60.0, 1e-9)
        self._clock = clock
        self.level = self.capacity * start_level
        self._t = clock()

    def _refill(self) -> None:
        now = self._clock()
        self.level = min(self.capacity, self.level + (now - self._t) * self.rate)
        self._t = now

    def wait_for(self, cost: float) -> float:
        """Seconds until ``cost`` could be admitted; 0 when it can be now."""
        self._refill()
        need = min(cost, self.capacity)
        deficit = need - self.level
        return 0.0 if deficit <= 1e-9 else deficit / self.rate

    def take(self, cost: float) -> None:
        self._refill()
        self.level -= cost


@dataclass
class Refusal:
    reason: str  # names the limit, for the 429 detail
    retry_after: int  # whole seconds


@dataclass
class KeyLimiter:
    """The limits of one key; ``None`` means unlimited."""

    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None
    burst_seconds: float = 60.0
    in_flight: int = 0
    start_level: float = 1.0  # fraction of each bucket's capacity it holds at the start
    _rpm: TokenBucket | None = field(default=None, init=False, repr=False)
    _tpm: TokenBucket | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        b, lvl = self.burst_seconds, self.start_level
        self._rpm = TokenBucket(self.rpm, b, start_level=lvl) if self.rpm else None
        self._tpm = TokenBucket(self.tpm, b, start_level=lvl) if self.tpm else None

    def admit(self, tokens: int) -> Refusal | None:
        """Admit a request of ``tokens`` (taking its budget and an in-flight slot) or say why not."""
        if self.concurrency is not None and self.in_flight >= self.concurrency:
            return Refusal(f"concurrency limit of {self.concurrency} requests in flight reached", 1)
        waits = []
        if self._rpm is not None and (w := self._rpm.wait_for(1)) > 0:
            waits.append((w, f"rate limit of {self.rpm} requests per minute exceeded"))
        if self._tpm is not None and (w := self._tpm.wait_for(tokens)) > 0:
            waits.append((w, f"rate limit of {self.tpm} tokens per minute exceeded ({tokens} requested)"))
        if waits:
            w, reason = max(waits)
            return Refusal(reason, max(1, math.ceil(w)))
        if self._rpm is not None:
            self._rpm.take(1)
        if self._tpm is not None:
            self._tpm.take(tokens)
        self.in_flight += 1
        return None

    def admit_request(self) -> Refusal | None:
        """Spend one request of the RPM budget only (a batch submit: no tokens, no in-flight slot) or say why not."""
        if self._rpm is None:
            return None
        w = self._rpm.wait_for(1)
        if w > 0:
            return Refusal(f"rate limit of {self.rpm} requests per minute exceeded", max(1, math.ceil(w)))
        self._rpm.take(1)
        return None

    def release(self) -> None:
        self.in_flight -= 1

"""Per-worker rate limiting: each worker spends only its share of the key's budget.

The key's budget (``[limits]``: RPM, TPM, concurrent requests) is shared by every worker. The driver
knows how many shards are still to run; each worker asks for its share (``share_of``) and limits
itself with a ``WorkerLimiter``:

* two token buckets — requests and tokens — refilling at the share's per-second rate, holding at
  most ``burst_seconds`` of it (never less than one request's worth, so a big request still fits);
* a concurrency cap (the share of concurrent requests);
* AIMD on 429: a rate-limited answer multiplies the rate by ``backoff_factor`` and pauses new requests
  for Retry-After (when given); each quiet second adds ``recovery_per_s`` back, up to the full share.

Tokens are reserved with the client's calibrated estimate before a request and settled with the
server's ``usage.total_tokens`` after it (``release``), so the bucket tracks what the server counts.
Buckets may go negative after settling; the next request then waits for the debt to refill.

We write this by hand because none of the maintained limiters does all of: several dimensions at
once, a rate that changes while requests wait (share changes, AIMD), and after-the-fact settling.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

__all__ = ["Share", "share_of", "TokenBucket", "WorkerLimiter"]


@dataclass(frozen=True)
class Share:
    """One worker's slice of the key's budget."""

    rpm: float
    tpm: float
    concurrency: int


def share_of(rpm: float, tpm: float, concurrency: int, *, active: int, rank: int, target: float = 1.0) -> Share:
    """The share of worker number ``rank`` (0-based) when ``active`` workers split the budget.

    Rates split evenly (times ``target``, the headroom); concurrent requests split as integers that add
    up to the total, the first ``concurrency % active`` workers getting one more, and never below one.
    """
    active = max(1, active)
    rank = min(max(0, rank), active - 1)
    base, extra = divmod(concurrency, active)
    return Share(rpm * target / active, tpm * target / active, max(1, base + (1 if rank < extra else 0)))


class TokenBucket:
    """A bucket refilling at ``rate`` per second up to ``capacity``; may go negative when settled."""

    def __init__(self, rate: float, capacity: float, *, level: float | None = None, clock=time.monotonic):
        self._clock = clock
        self.rate = float(rate)
        self.capacity = float(capacity)
        self.level = self.capacity if level is None else float(level)
        self._t = clock()

    def _refill(self) -> None:
        now = self._clock()
        self.level = min(self.capacity, self.level + (now - self._t) * self.rate)
        self._t = now

    def set_rate(self, rate: float, capacity: float) -> None:
        self._refill()
        self.rate, self.capacity = float(rate), float(capacity)
        self.level = min(self.level, self.capacity)

    def wait_time(self, amount: float) -> float:
        """Seconds until ``amount`` can be taken (an amount over capacity needs a full bucket)."""
        self._refill()
        need = min(amount, self.capacity) - self.level
        return 0.0 if need <= 0 else need / self.rate

    def take(self, amount: float) -> None:
        self._refill()
        self.level -= amount

    def give(self, amount: float) -> None:
        self._refill()
        self.level = min(self.capacity, self.level + amount)


class WorkerLimiter:
    """Limits one worker to its ``Share``; implements the client's ``Limiter`` protocol."""

    def __init__(self, share: Share, *, burst_seconds: float = 2.0, max_request_tokens: int = 0,
                 backoff_factor: float = 0.7, min_factor: float = 0.1, recovery_per_s: float = 0.05,
                 start_levels: tuple[float, float] | None = None, clock=time.monotonic):
        self._clock = clock
        self.burst_seconds = burst_seconds
        self.max_request_tokens = max_request_tokens
        self.backoff_factor = backoff_factor
        self.min_factor = min_factor
        self.recovery_per_s = recovery_per_s
        self.factor = 1.0  # AIMD multiplier on the share's rates
        self._factor_t = clock()
        self._paused_until = 0.0
        self.in_flight = 0
        self.rate_limited = 0
        self._cond: asyncio.Condition | None = None
        self.share = share
        self._requests = TokenBucket(1, 1, clock=clock)
        self._tokens = TokenBucket(1, 1, clock=clock)
        self.set_share(share, reset=True)
        if start_levels is not None:  # continue where a finished worker left off (None: start full)
            self._requests.level = min(self._requests.capacity, start_levels[0])
            self._tokens.level = min(self._tokens.capacity, start_levels[1])

    def levels(self) -> tuple[float, float]:
        """What is left in the (requests, tokens) buckets now: handed to the next worker on this share."""
        self._requests._refill()
        self._tokens._refill()
        return self._requests.level, self._tokens.level

    # -- configuration -------------------------------------------------------------------------
    def set_share(self, share: Share, *, reset: bool = False) -> None:
        """Adopt a new share (more workers joined, or some finished and freed theirs)."""
        self.share = share
        self._apply_rates(reset=reset)

    def _apply_rates(self, reset: bool = False) -> None:
        f = self.factor
        r_rate, t_rate = self.share.rpm / 60 * f, self.share.tpm / 60 * f
        r_cap = max(1.0, r_rate * self.burst_seconds)
        t_cap = max(float(self.max_request_tokens), t_rate * self.burst_seconds, 1.0)
        if reset:
            self._requests = TokenBucket(r_rate, r_cap, clock=self._clock)
            self._tokens = TokenBucket(t_rate, t_cap, clock=self._clock)
        else:
            self._requests.set_rate(r_rate, r_cap)
            self._tokens.set_rate(t_rate, t_cap)

    def _recover(self) -> None:
        now = self._clock()
        if self.factor < 1.0 and now >= self._paused_until:
            self.factor = min(1.0, self.factor + (now - self._factor_t) * self.recovery_per_s)
            self._apply_rates()
        self._factor_t = now

    # -- the Limiter protocol ------------------------------------------------------------------
    async def acquire(self, tokens: int) -> None:
        """Wait until one request of ``tokens`` fits the rates and a concurrency slot is free."""
        if self._cond is None:
            self._cond = asyncio.Condition()
        async with self._cond:
            while True:
                self._recover()
                if self.in_flight >= self.share.concurrency:
                    await self._cond.wait()
                    continue
                wait = max(self._paused_until - self._clock(), self._requests.wait_time(1),
                           self._tokens.wait_time(tokens))
                if wait <= 0:
                    self._requests.take(1)
                    self._tokens.take(tokens)
                    self.in_flight += 1
                    return
                try:  # sleep, but wake early if a release changes the picture
                    await asyncio.wait_for(self._cond.wait(), timeout=min(wait, 1.0))
                except asyncio.TimeoutError:
                    pass

    def release(self, tokens_estimated: int, tokens_used: int | None, *, rate_limited: bool = False,
                retry_after: float | None = None) -> None:
        """Free the slot; settle tokens with the server's count; slow down after a 429."""
        self.in_flight = max(0, self.in_flight - 1)
        if tokens_used is not None:
            self._tokens.take(tokens_used - tokens_estimated)
        if rate_limited:
            self.rate_limited += 1
            self.factor = max(self.min_factor, self.factor * self.backoff_factor)
            self._factor_t = self._clock()
            if retry_after:
                self._paused_until = max(self._paused_until, self._clock() + retry_after)
            self._apply_rates()
        if self._cond is not None:
            cond = self._cond

            async def _notify() -> None:
                async with cond:
                    cond.notify_all()

            try:
                asyncio.get_running_loop().create_task(_notify())
            except RuntimeError:  # no loop running (sync use): nobody waits
                pass

    def __repr__(self) -> str:
        s = self.share
        return (f"WorkerLimiter(rpm={s.rpm:.1f}, tpm={s.tpm:.0f}, concurrency={s.concurrency}, "
                f"factor={self.factor:.2f}, in_flight={self.in_flight})")

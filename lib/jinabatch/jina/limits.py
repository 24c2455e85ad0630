"""Client-side rate limiting: every HTTP attempt waits here for a concurrency slot and for budget.

``WorkerLimiter`` admits requests **in arrival order** (a big request is never overtaken forever by small
ones), under a concurrency cap, once two buckets — requests and tokens — hold the request's cost. The
buckets are filled in one of two ways:

* **by the clock** (``WorkerLimiter(share)``): they refill at the share's per-second rates and hold at most
  ``burst_seconds`` of it (never less than one request's worth, so a big request still fits). This is what
  ``JinaClient(rpm=..., tpm=...)`` uses. A 429 multiplies the rates by ``backoff_factor`` and pauses new
  requests for Retry-After; each quiet second adds ``recovery_per_s`` back (AIMD).
* **by grants** (``WorkerLimiter(share, fed=True)``): the embed job's shard tasks, whose buckets only grow
  when the coordinator grants budget from the key's own buckets (``grant``). ``demand()`` says what the
  waiting requests need, ``take_levels()`` hands back what is left when the task ends. A 429 pauses
  locally for Retry-After; the slowing down is the coordinator's, for every worker on the key.

Tokens are reserved with the client's calibrated estimate before a request and settled with the server's
``usage.total_tokens`` after it (``release``), so the buckets track what the server counts; they may go
negative after settling, and the next request then waits for the debt to be paid.

``share_of`` splits a key's budget among workers. We write this by hand because none of the maintained
limiters does all of: several dimensions at once, a rate that changes while requests wait, after-the-fact
settling, and budget fed from elsewhere.
"""
from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["Limiter", "NoLimiter", "Share", "share_of", "TokenBucket", "WorkerLimiter", "explicit_limiter",
           "UNLIMITED"]

UNLIMITED = 1e12  # a rate or capacity no real limit reaches (finite, so arithmetic stays finite)


@runtime_checkable
class Limiter(Protocol):
    """Admission control for each HTTP attempt (``WorkerLimiter``, ``AdaptiveLimiter``)."""

    async def acquire(self, tokens: int) -> None:
        """Wait for 1 request + ``tokens`` of budget + a concurrency slot."""

    def release(self, tokens_estimated: int, tokens_used: int | None, *, rate_limited: bool = False,
                retry_after: float | None = None, limit: str | None = None) -> None:
        """Free the slot, settle tokens (debit the difference), hear about a 429 (its Retry-After and
        the limit its message named: "rpm", "tpm", "concurrency" or None)."""


class NoLimiter:
    """Admits everything at once (pass it to opt out of pacing)."""

    async def acquire(self, tokens: int) -> None:
        return None

    def release(self, tokens_estimated: int, tokens_used: int | None, *, rate_limited: bool = False,
                retry_after: float | None = None, limit: str | None = None) -> None:
        return None

    def __repr__(self) -> str:
        return "NoLimiter()"


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
    """A bucket refilling at ``rate`` per second up to ``capacity``; may go negative when settled.

    ``rate = 0`` makes a bucket that only grows by ``give`` (a worker's allowance fed by grants)."""

    def __init__(self, rate: float, capacity: float, *, level: float | None = None, clock=time.monotonic):
        self._clock = clock
        self.rate = float(rate)
        self.capacity = float(capacity)
        self.level = self.capacity if level is None else float(level)
        self._t = clock()

    def _refill(self) -> None:
        now = self._clock()
        if self.rate:
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
        if need <= 0:
            return 0.0
        return need / self.rate if self.rate else math.inf

    def take(self, amount: float) -> None:
        self._refill()
        self.level -= amount

    def give(self, amount: float) -> None:
        self._refill()
        self.level = min(self.capacity, self.level + amount)


class WorkerLimiter:
    """Limits one worker to its ``Share`` (or to what it is granted); implements the client's ``Limiter``."""

    def __init__(self, share: Share, *, burst_seconds: float = 2.0, max_request_tokens: int = 0,
                 backoff_factor: float = 0.7, min_factor: float = 0.1, recovery_per_s: float = 0.05,
                 start_levels: tuple[float, float] | None = None, fed: bool = False,
                 on_need: Callable[[], None] | None = None, clock=time.monotonic):
        self._clock = clock
        self.burst_seconds = burst_seconds
        self.max_request_tokens = max_request_tokens
        self.backoff_factor = backoff_factor
        self.min_factor = min_factor
        self.recovery_per_s = recovery_per_s
        self.fed = fed
        self.on_need = on_need  # fed mode: called when a waiting request lacks budget (wakes the grant pump)
        self.factor = 1.0  # AIMD multiplier on the share's rates (clock mode)
        self._factor_t = clock()
        self._paused_until = 0.0
        self.in_flight = 0
        self.rate_limited = 0  # 429s seen
        self.last_retry_after: float | None = None
        self._queue: deque[tuple[int, int]] = deque()  # (ticket, tokens) of waiting requests, arrival order
        self._tickets = itertools.count()
        self._cond: asyncio.Condition | None = None
        self.share = share
        self._requests = TokenBucket(0, UNLIMITED, level=0, clock=clock)
        self._tokens = TokenBucket(0, UNLIMITED, level=0, clock=clock)
        if not fed:
            self._apply_rates(reset=True)
            if start_levels is not None:  # continue where a finished worker left off (None: start full)
                self._requests.level = min(self._requests.capacity, start_levels[0])
                self._tokens.level = min(self._tokens.capacity, start_levels[1])

    def levels(self) -> tuple[float, float]:
        """What is left in the (requests, tokens) buckets now."""
        self._requests._refill()
        self._tokens._refill()
        return self._requests.level, self._tokens.level

    def request_tokens(self) -> int | None:
        """Largest request (in tokens) worth sending through this limiter; None = no opinion."""
        return self.max_request_tokens or None

    # -- configuration -------------------------------------------------------------------------
    def set_share(self, share: Share, *, reset: bool = False) -> None:
        """Adopt a new share (more workers joined, or some finished and freed theirs)."""
        self.share = share
        if not self.fed:
            self._apply_rates(reset=reset)
        self._notify()

    def set_concurrency(self, n: int) -> None:
        if n != self.share.concurrency:
            self.share = Share(self.share.rpm, self.share.tpm, n)
            self._notify()

    def pause(self, seconds: float) -> None:
        """Send nothing new for ``seconds`` (a 429's Retry-After, here or on another worker of the key)."""
        if seconds > 0:
            self._paused_until = max(self._paused_until, self._clock() + seconds)

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

    # -- grants (fed mode) ---------------------------------------------------------------------
    def grant(self, requests: float, tokens: float) -> None:
        """Budget from the coordinator: added to the buckets, waiting requests re-check."""
        if requests or tokens:
            self._requests.give(requests)
            self._tokens.give(tokens)
            self._notify()

    def demand(self) -> tuple[float, float]:
        """(requests, tokens) the waiting requests lack: those a free slot would let start now, at least one."""
        if not self._queue:
            return 0.0, 0.0
        n = max(1, self.share.concurrency - self.in_flight)
        heads = list(itertools.islice(self._queue, n))
        req, tok = self.levels()
        return max(0.0, len(heads) - req), max(0.0, sum(t for _, t in heads) - tok)

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def take_levels(self) -> tuple[float, float]:
        """Empty the buckets and return what they held (negative: tokens used beyond the grants)."""
        levels = self.levels()
        self._requests.level = self._tokens.level = 0.0
        return levels

    # -- the Limiter protocol ------------------------------------------------------------------
    async def acquire(self, tokens: int) -> None:
        """Wait (in arrival order) until one request of ``tokens`` fits the budget and a slot is free."""
        if self._cond is None:
            self._cond = asyncio.Condition()
        entry = (next(self._tickets), tokens)
        self._queue.append(entry)
        try:
            async with self._cond:
                while True:
                    if not self.fed:
                        self._recover()
                    wait = 1.0
                    head = self._queue[0] is entry
                    if head and self.in_flight < self.share.concurrency:
                        wait = max(self._paused_until - self._clock(), self._requests.wait_time(1),
                                   self._tokens.wait_time(tokens))
                        if wait <= 0:
                            self._requests.take(1)
                            self._tokens.take(tokens)
                            self.in_flight += 1
                            self._queue.popleft()
                            self._cond.notify_all()  # the next in line may go now
                            return
                    if head and self.on_need is not None and self._paused_until <= self._clock():
                        self.on_need()  # short of budget or of a slot: ask the coordinator now
                    try:  # sleep, but wake early if a release or a grant changes the picture
                        await asyncio.wait_for(self._cond.wait(), timeout=min(wait, 1.0))
                    except asyncio.TimeoutError:
                        pass
        finally:
            if entry in self._queue:  # cancelled (or failed) while waiting: leave the line, wake the next
                self._queue.remove(entry)
                self._notify()

    def release(self, tokens_estimated: int, tokens_used: int | None, *, rate_limited: bool = False,
                retry_after: float | None = None, limit: str | None = None) -> None:
        """Free the slot; settle tokens with the server's count; slow down after a 429."""
        self.in_flight = max(0, self.in_flight - 1)
        if tokens_used is not None:
            self._tokens.take(tokens_used - tokens_estimated)
        if rate_limited:
            self.rate_limited += 1
            self.last_retry_after = retry_after
            if retry_after:
                self.pause(retry_after)
            if not self.fed:  # fed: the coordinator slows the whole key down
                self.factor = max(self.min_factor, self.factor * self.backoff_factor)
                self._factor_t = self._clock()
                self._apply_rates()
        self._notify()

    def _notify(self) -> None:
        if self._cond is None:
            return
        cond = self._cond

        async def _wake() -> None:
            async with cond:
                cond.notify_all()

        try:
            asyncio.get_running_loop().create_task(_wake())
        except RuntimeError:  # no loop running (sync use): nobody waits
            pass

    def __repr__(self) -> str:
        s = self.share
        mode = "fed" if self.fed else f"rpm={s.rpm:.1f}, tpm={s.tpm:.0f}"
        return (f"WorkerLimiter({mode}, concurrency={s.concurrency}, factor={self.factor:.2f}, "
                f"in_flight={self.in_flight}, waiting={len(self._queue)})")


def explicit_limiter(rpm: float | None, tpm: float | None, concurrency: int, max_tokens: int) -> WorkerLimiter:
    """The job's limiter at given rates, starting with empty buckets: requests big enough that RPM does not
    bind before TPM (4 × TPM/RPM) and at most two seconds of TPM, never below 512 tokens or above ``max_tokens``."""
    size = max_tokens
    if tpm:
        size = min(size, max(512, min(4 * tpm / rpm if rpm else tpm, tpm / 60 * 2)))
    # starting empty, like the job: the server's full bucket stays ours as slack, so its exact rates are safe
    return WorkerLimiter(Share(rpm or UNLIMITED, tpm or UNLIMITED, concurrency), burst_seconds=2.0,
                         max_request_tokens=int(size), start_levels=(0.0, 0.0))

"""Client-side rate limiting: every HTTP attempt waits here for a concurrency slot and for budget.

``WorkerLimiter`` admits requests **in arrival order** (a big request is never overtaken forever by small
ones), under a concurrency cap, once two buckets — requests and tokens — hold the request's cost. The
buckets refill at the share's per-second rates and hold at most ``burst_seconds`` of it (never less than one
request's worth, so a big request still fits). This is what ``JinaClient(rpm=..., tpm=...)`` uses; the embed
job's shard tasks are paced by the coordinator's grants instead (``jinabatch.embed.grants``). A 429 pauses
new requests for Retry-After and, when 429s keep coming, slows the rates down (``Slowdown``).

Tokens are reserved with the client's calibrated estimate before a request and settled with the server's
``usage.total_tokens`` after it (``release``), so the buckets track what the server counts; they may go
negative after settling, and the next request then waits for the debt to be paid.

``TokenBucket`` and ``Slowdown`` are shared with the coordinator. We write this by hand because none of the
maintained limiters does all of: several dimensions at once, a rate that changes while requests wait,
after-the-fact settling, and budget granted from elsewhere.
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

__all__ = ["Wakeup", "Limiter", "NoLimiter", "Share", "share_of", "TokenBucket", "Slowdown", "WorkerLimiter",
           "explicit_limiter", "UNLIMITED"]

UNLIMITED = 1e12  # a rate or capacity no real limit reaches (finite, so arithmetic stays finite)


class Wakeup:
    """Wakes every coroutine of one event loop that waits on it.

    No lock: waiters and wakers share one loop, so there is nothing to guard, and a waiter cancelled mid-wait (a
    request cancelled with its shard, a timeout) leaves nothing held. ``asyncio.Condition`` with ``wait_for`` on
    Python 3.11 could: a timed-out wait left the condition's lock released under its owner ("Lock is not
    acquired"), and the cancelled waiters then waited forever to re-acquire it, hanging a shard task at its end.
    """

    def __init__(self) -> None:
        self._event: asyncio.Event | None = None

    def notify(self) -> None:
        """Wake everyone waiting now (callable from plain code in the loop's thread, or with no loop at all)."""
        if self._event is not None:
            self._event.set()
            self._event = None

    async def wait(self, timeout: float) -> None:
        """Until the next ``notify`` or ``timeout`` seconds, whichever comes first."""
        if self._event is None:
            self._event = asyncio.Event()
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except asyncio.TimeoutError:
            pass


@runtime_checkable
class Limiter(Protocol):
    """Admission control for each HTTP attempt (``WorkerLimiter``, ``AdaptiveLimiter``, the embed job's
    ``GrantedLimiter``)."""

    async def acquire(self, tokens: int) -> object | None:
        """Wait for 1 request + ``tokens`` of budget + a concurrency slot. May return a permit, which ``release``
        gets back; a permit with a ``key`` attribute names the key of the client's pool to send with."""

    def release(self, tokens_estimated: int, tokens_used: int | None, *, rate_limited: bool = False,
                retry_after: float | None = None, limit: str | None = None, permit: object | None = None) -> None:
        """Free the slot, settle tokens (debit the difference), hear about a 429 (its Retry-After and
        the limit its message named: "rpm", "tpm", "concurrency" or None)."""


class NoLimiter:
    """Admits everything at once (pass it to opt out of pacing)."""

    async def acquire(self, tokens: int) -> None:
        return None

    def release(self, tokens_estimated: int, tokens_used: int | None, *, rate_limited: bool = False,
                retry_after: float | None = None, limit: str | None = None, permit: object | None = None) -> None:
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

    ``rate = 0`` makes a bucket that only grows by ``give``."""

    def __init__(self, rate: float, capacity: float, *, level: float | None = None, clock=time.monotonic):
        self._clock = clock
        self.rate = float(rate)
        self.capacity = float(capacity)
        self.level = self.capacity if level is None else float(level)
        self._t = clock()
        self._full_since: float | None = self._t if self.level >= self.capacity else None

    def refill(self) -> float:
        """Add what the clock has given since the last call (up to the capacity); returns the level."""
        now = self._clock()
        if self.rate:
            before = self.level
            self.level = min(self.capacity, before + (now - self._t) * self.rate)
            if self.level >= self.capacity and self._full_since is None:
                self._full_since = self._t + max(0.0, self.capacity - before) / self.rate
        self._t = now
        return self.level

    def full_for(self) -> float:
        """Seconds the bucket has been full (0 when it is not)."""
        self.refill()
        return self._clock() - self._full_since if self._full_since is not None else 0.0

    def set_rate(self, rate: float, capacity: float) -> None:
        self.refill()
        self.rate, self.capacity = float(rate), float(capacity)
        self.level = min(self.level, self.capacity)

    def wait_time(self, amount: float) -> float:
        """Seconds until ``amount`` can be taken (an amount over capacity needs a full bucket)."""
        self.refill()
        need = min(amount, self.capacity) - self.level
        if need <= 0:
            return 0.0
        return need / self.rate if self.rate else math.inf

    def take(self, amount: float) -> None:
        """Take ``amount`` (the level may go below zero); a negative amount gives back, up to the capacity."""
        self.refill()
        self.level = min(self.capacity, self.level - amount)
        if self.level < self.capacity:
            self._full_since = None

    def give(self, amount: float) -> None:
        self.take(-amount)

    def reset(self, level: float) -> None:
        """Start over at ``level`` now (what the clock would have added before is not counted)."""
        self._t = self._clock()
        self.level = min(self.capacity, float(level))
        self._full_since = self._t if self.level >= self.capacity else None

    def at_most(self, level: float) -> None:
        """Lower the level to ``level`` if it is above (after a 429: the server's bucket is empty now)."""
        self.refill()
        if self.level > level:
            self.level = level
            self._full_since = None


class Slowdown:
    """How the pace of a key with configured limits reacts to 429s: a multiplier on its rates.

    An isolated 429 leaves the rates alone — the limits are right, the server's bucket was short for a moment
    (an estimate, arrivals bunching) and the Retry-After pause settles it; cutting the rate would pay for one
    refusal with seconds of budget. A 429 that follows another within ``window`` seconds says the key has
    less than configured (it is shared, or its tier is lower): then the rates are cut × ``cut`` (once a
    second at most), and ``recover`` of them comes back each second without a pause (AIMD)."""

    def __init__(self, *, cut: float = 0.85, recover: float = 0.02, window: float = 10.0, floor: float = 0.1,
                 clock=time.monotonic):
        self.cut, self.recover, self.window, self.floor = cut, recover, window, floor
        self._clock = clock
        self.factor = 1.0
        self._t = clock()
        self._last_429: float | None = None  # start of the last episode of 429s

    def refused(self) -> bool:
        """A 429 now; True if the factor changed. The 429s of one second are one episode, one signal."""
        now = self._clock()
        if self._last_429 is not None and now - self._last_429 < 1.0:
            return False
        repeat = self._last_429 is not None and now - self._last_429 <= self.window
        self._last_429 = now
        if repeat:
            self._t = now
            self.factor = max(self.floor, self.factor * self.cut)
            return True
        return False

    def update(self, paused_until: float) -> bool:
        """Recover for the time since the last call (not while paused); True if the factor changed."""
        now = self._clock()
        before = self.factor
        if self.factor < 1.0 and now >= paused_until:
            self.factor = min(1.0, self.factor + max(0.0, now - max(self._t, paused_until)) * self.recover)
        self._t = now
        return self.factor != before


class WorkerLimiter:
    """Limits one client to its ``Share``; implements the client's ``Limiter``."""

    def __init__(self, share: Share, *, burst_seconds: float = 2.0, max_request_tokens: int = 0,
                 start_levels: tuple[float, float] | None = None, slowdown: Slowdown | None = None,
                 clock=time.monotonic):
        self._clock = clock
        self.burst_seconds = burst_seconds
        self.max_request_tokens = max_request_tokens
        self.slowdown = slowdown or Slowdown(clock=clock)
        self._paused_until = 0.0
        self.in_flight = 0
        self.rate_limited = 0  # 429s seen
        self.last_retry_after: float | None = None
        self._queue: deque[tuple[int, int]] = deque()  # (ticket, tokens) of waiting requests, arrival order
        self._tickets = itertools.count()
        self._wakeup = Wakeup()
        self.share = share
        self._requests = TokenBucket(0, UNLIMITED, level=0, clock=clock)
        self._tokens = TokenBucket(0, UNLIMITED, level=0, clock=clock)
        self._apply_rates(reset=True)
        if start_levels is not None:  # e.g. (0, 0): start empty (None: start full)
            self._requests.at_most(start_levels[0])
            self._tokens.at_most(start_levels[1])

    @property
    def factor(self) -> float:
        """The multiplier 429s put on the share's rates (1.0: none)."""
        return self.slowdown.factor

    def levels(self) -> tuple[float, float]:
        """What is left in the (requests, tokens) buckets now."""
        return self._requests.refill(), self._tokens.refill()

    def rates(self) -> tuple[float, float]:
        """The (requests, tokens) per second the buckets refill at now."""
        return self._requests.rate, self._tokens.rate

    def request_tokens(self) -> int | None:
        """Largest request (in tokens) worth sending through this limiter; None = no opinion."""
        return self.max_request_tokens or None

    # -- configuration -------------------------------------------------------------------------
    def set_share(self, share: Share, *, reset: bool = False) -> None:
        """Adopt a new share (the key's budget changed)."""
        self.share = share
        self._apply_rates(reset=reset)
        self._notify()

    def set_concurrency(self, n: int) -> None:
        if n != self.share.concurrency:
            self.share = Share(self.share.rpm, self.share.tpm, n)
            self._notify()

    def pause(self, seconds: float) -> None:
        """Send nothing new for ``seconds`` (a 429's Retry-After)."""
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
        if self.slowdown.update(self._paused_until):
            self._apply_rates()

    @property
    def waiting(self) -> int:
        return len(self._queue)

    # -- the Limiter protocol ------------------------------------------------------------------
    async def acquire(self, tokens: int) -> None:
        """Wait (in arrival order) until one request of ``tokens`` fits the budget and a slot is free."""
        entry = (next(self._tickets), tokens)
        self._queue.append(entry)
        try:
            while True:
                self._recover()
                wait = 1.0
                if self._queue[0] is entry and self.in_flight < self.share.concurrency:
                    wait = max(self._paused_until - self._clock(), self._requests.wait_time(1),
                               self._tokens.wait_time(tokens))
                    if wait <= 0:
                        self._requests.take(1)
                        self._tokens.take(tokens)
                        self.in_flight += 1
                        self._queue.popleft()
                        self._wakeup.notify()  # the next in line may go now
                        return
                await self._wakeup.wait(min(wait, 1.0))  # sleep, but wake early if a release changes the picture
        finally:
            if entry in self._queue:  # cancelled (or failed) while waiting: leave the line, wake the next
                self._queue.remove(entry)
                self._notify()

    def release(self, tokens_estimated: int, tokens_used: int | None, *, rate_limited: bool = False,
                retry_after: float | None = None, limit: str | None = None, permit: object | None = None) -> None:
        """Free the slot; settle tokens with the server's count; after a 429 pause (and slow down if they recur)."""
        self.in_flight = max(0, self.in_flight - 1)
        if tokens_used is not None:
            self._tokens.take(tokens_used - tokens_estimated)
        if rate_limited:
            self.rate_limited += 1
            self.last_retry_after = retry_after
            self.pause(retry_after if retry_after else 1.0)
            self._requests.at_most(0.0)  # the server's bucket is short now: start again from empty
            self._tokens.at_most(0.0)
            if self.slowdown.refused():
                self._apply_rates()
        self._notify()

    def _notify(self) -> None:
        self._wakeup.notify()

    def __repr__(self) -> str:
        s = self.share
        return (f"WorkerLimiter(rpm={s.rpm:.1f}, tpm={s.tpm:.0f}, concurrency={s.concurrency}, "
                f"factor={self.factor:.2f}, in_flight={self.in_flight}, waiting={len(self._queue)})")


def explicit_limiter(rpm: float | None, tpm: float | None, concurrency: int, max_tokens: int) -> WorkerLimiter:
    """The job's limiter at given rates, starting with empty buckets: requests big enough that RPM does not
    bind before TPM (4 × TPM/RPM) and at most two seconds of TPM, never below 512 tokens or above ``max_tokens``."""
    size = max_tokens
    if tpm:
        size = min(size, max(512, min(4 * tpm / rpm if rpm else tpm, tpm / 60 * 2)))
    # starting empty, like the job: the server's full bucket stays ours as slack, so its exact rates are safe
    return WorkerLimiter(Share(rpm or UNLIMITED, tpm or UNLIMITED, concurrency), burst_seconds=2.0,
                         max_request_tokens=int(size), start_levels=(0.0, 0.0))

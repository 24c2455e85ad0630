"""Grants: how a key's budget reaches the requests of the shard tasks on it — whole requests, first come first
served, checked against the job's pace and against a model of the server's bucket.

**Worker side** — ``GrantedLimiter``, the client's ``Limiter`` inside a shard task. A request waits in line
with a ticket until the coordinator grants that ticket. The task's pump reports the tickets that a free slot
would let start (``asks``), what the server billed beyond or below the estimates since the last report
(``take_settlement``) and the 429s it got (``take_refusals``), and hands the grants back (``grant``).

**Coordinator side** — ``KeyBudget``, one per key. The asks of all tasks on the key stand in one line, in the
order the coordinator first heard of them, and are granted whole (never a part of a request's tokens), the
first in line first, like the server admits them. The head of the line is granted when

* the **job's pace** is not in debt: request and token buckets refill at ``target`` × the limits, hold at
  most ``burst_seconds`` of it and start empty; a grant debits its estimate and may drive them below zero,
  and nothing more is granted until they are back at zero. Paying after rather than saving up before means
  the key never idles while a big request waits for budget to pile up — which, with the server's bucket
  full meanwhile, is budget lost — and the long-run rate is still the pace;
* and the **server's bucket, as modelled**, holds it with a margin: buckets at the limits, holding
  ``burst_seconds`` of them, full at the start (an idle key), debited at grant time and settled like the
  job's. Requests reach the server a moment after their grant; were that moment the same for all, the
  server's bucket would be the model's, shifted in time. It is not (polls, the network), and the estimates
  of the requests in flight are not the bill yet: the margin (``MARGIN`` of the bucket) is room for both.
  The server admits a request of up to its bucket's size when the bucket holds it, and a bigger one (a row
  of 8,192 tokens on a key whose 2 s of budget is 5,000) only when the bucket is full, driving it negative;
  so a request whose need with the margin is more than the bucket goes when the model has been full for as
  long as it takes to refill that excess.

In a steady run the server's bucket is full and the job's pace binds; after an idle moment it keeps the burst
inside what the server has.

What the server billed settles both models (``settle``): the estimate was debited at grant time, the
difference follows with the task's next poll; tokens granted but never sent come back the same way. A 429 is
evidence the model was optimistic: both models are lowered to empty, every task on the key pauses for the
Retry-After, the refused request's tokens go back to the server's model (it did not bill them) but not to
the job's (a correction towards caution), and only 429s that recur slow the key down (``Slowdown``).
"""
from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Callable, Sequence

from ..jina.limits import Slowdown, TokenBucket

__all__ = ["KeyBudget", "GrantedLimiter", "BURST_SECONDS", "MARGIN", "ASK_TTL"]

BURST_SECONDS = 2.0  # the buckets we assume the API keeps: the shortest a real server is likely to use
MARGIN = 0.1  # of the server's bucket: room for grants reaching it out of step and for estimates in flight
ASK_TTL = 2.0  # seconds after which the asks of a task that stopped polling leave the line (tasks poll ~10×/s)

Grant = tuple[int, float]  # (ticket, tokens)


class KeyBudget:
    """One key's budget: the job's pace and the server's bucket as modelled, the key's line of asks."""

    def __init__(self, rpm: float, tpm: float, concurrency: int, target: float, *,
                 burst_seconds: float = BURST_SECONDS, clock=time.monotonic):
        self.rpm, self.tpm, self.concurrency, self.target = rpm, tpm, concurrency, target
        self.burst_seconds = burst_seconds
        self._clock = clock
        self.slowdown = Slowdown(clock=clock)
        self.paused_until = 0.0
        self.started = False
        self.requests = TokenBucket(0, 1, level=0, clock=clock)  # the job's pace (rates set by _apply)
        self.tokens = TokenBucket(0, 1, level=0, clock=clock)
        self.server_requests = TokenBucket(rpm / 60, max(1.0, rpm / 60 * burst_seconds), clock=clock)  # full
        self.server_tokens = TokenBucket(tpm / 60, max(1.0, tpm / 60 * burst_seconds), clock=clock)
        self._apply()
        self._line: dict[tuple[int, int], tuple[float, float]] = {}  # (shard, ticket) -> (first asked, tokens)
        self._asked: dict[int, float] = {}  # shard -> when it last reported its asks
        self._granted: dict[int, list[Grant]] = {}  # shard -> grants not yet delivered

    @property
    def factor(self) -> float:
        """The multiplier recurring 429s put on the job's pace (1.0: none)."""
        return self.slowdown.factor

    def _apply(self) -> None:
        f = self.target * self.factor / 60
        for bucket, per_min in ((self.requests, self.rpm), (self.tokens, self.tpm)):
            bucket.set_rate(per_min * f, max(1.0, per_min * f * self.burst_seconds))

    # -- the line --------------------------------------------------------------------------------
    def ask(self, shard: int, asks: Sequence[Grant]) -> None:
        """``shard``'s requests that could start now (ticket, estimated tokens), in its own order; replaces
        what it asked before (a ticket it no longer lists was cancelled, or is granted and on its way)."""
        now = self._clock()
        self._asked[shard] = now
        keep = {ticket for ticket, _ in asks}
        for k in [k for k in self._line if k[0] == shard and k[1] not in keep]:
            del self._line[k]
        delivering = {ticket for ticket, _ in self._granted.get(shard, ())}
        for i, (ticket, tokens) in enumerate(asks):
            if (shard, ticket) not in self._line and ticket not in delivering:
                self._line[(shard, ticket)] = (now + i * 1e-9, float(tokens))  # first heard of: its place

    def drop(self, shard: int) -> float:
        """``shard`` is gone: its asks leave the line, its undelivered grants come back; returns their tokens."""
        self._asked.pop(shard, None)
        for k in [k for k in self._line if k[0] == shard]:
            del self._line[k]
        back = self._granted.pop(shard, [])
        for _, tokens in back:
            self.requests.give(1)
            self.server_requests.give(1)
            self.settle(-tokens)
        return sum(t for _, t in back)

    def take_granted(self, shard: int) -> list[Grant]:
        """The grants made to ``shard`` since it last asked."""
        return self._granted.pop(shard, [])

    def grant(self) -> None:
        """Grant whole requests from the head of the line while both models hold them."""
        now = self._clock()
        for shard in [s for s, t in self._asked.items() if now - t > ASK_TTL]:  # stopped polling: gone
            self.drop(shard)
        if self.slowdown.update(self.paused_until):
            self._apply()
        if now < self.paused_until or not self._line:
            return
        for key, (_, tokens) in sorted(self._line.items(), key=lambda kv: kv[1][0]):
            if not self.started:  # the budget accrues from the first request on
                self.started = True
                self.requests.reset(0)
                self.tokens.reset(0)
            if not self._fits(tokens):
                break
            for bucket, amount in ((self.requests, 1), (self.server_requests, 1), (self.tokens, tokens),
                                   (self.server_tokens, tokens)):
                bucket.take(amount)
            del self._line[key]
            self._granted.setdefault(key[0], []).append((key[1], tokens))

    def _fits(self, tokens: float) -> bool:
        return (self.requests.refill() >= 0 and self.tokens.refill() >= 0
                and self._server_holds(self.server_requests, 1) and self._server_holds(self.server_tokens, tokens))

    @staticmethod
    def _server_holds(bucket: TokenBucket, amount: float) -> bool:
        need = min(amount, bucket.capacity) + MARGIN * bucket.capacity
        if need <= bucket.capacity:
            return bucket.refill() >= need
        return bucket.full_for() * bucket.rate >= need - bucket.capacity  # full for as long as the excess takes

    # -- what the server said ----------------------------------------------------------------------
    def settle(self, tokens: float) -> None:
        """The server billed ``tokens`` more than was granted (negative: less, or granted and never sent)."""
        if tokens:
            self.tokens.take(tokens)
            self.server_tokens.take(tokens)

    def rate_limited(self, retry_after: float | None, tokens: float = 0.0) -> None:
        """A 429 for a request of ``tokens``: both models to empty, the key paused, slower only if they recur."""
        now = self._clock()
        self.paused_until = max(self.paused_until, now + (retry_after or 1.0))
        self.server_tokens.give(tokens)  # the server did not bill it
        for bucket in (self.requests, self.tokens, self.server_requests, self.server_tokens):
            bucket.at_most(0.0)
        if self.slowdown.refused():
            self._apply()

    def pause_left(self) -> float:
        return max(0.0, self.paused_until - self._clock())


class GrantedLimiter:
    """The client's ``Limiter`` in a shard task: requests wait in arrival order until the coordinator grants
    their ticket, under the concurrency cap it sets; a 429 pauses the task for its Retry-After."""

    def __init__(self, concurrency: int, *, max_request_tokens: int = 0, on_need: Callable[[], None] | None = None,
                 clock=time.monotonic):
        self.concurrency = concurrency
        self.max_request_tokens = max_request_tokens
        self.on_need = on_need  # wakes the pump: a request could start and needs a grant
        self._clock = clock
        self.in_flight = 0
        self.rate_limited = 0  # 429s seen
        self.last_retry_after: float | None = None
        self._paused_until = 0.0
        self._queue: deque[tuple[int, int]] = deque()  # (ticket, tokens) waiting, arrival order
        self._granted: dict[int, float] = {}  # ticket -> tokens granted, not sent yet
        self._tickets = itertools.count()
        self._settled = 0.0  # billed beyond the grants since the last report (negative: tokens to give back)
        self._refusals: list[float] = []  # tokens of requests answered 429 since the last report
        self._cond: asyncio.Condition | None = None

    def request_tokens(self) -> int | None:
        """Largest request (in tokens) worth sending through this limiter; None = no opinion."""
        return self.max_request_tokens or None

    @property
    def waiting(self) -> int:
        return len(self._queue)

    # -- the pump's side ---------------------------------------------------------------------------
    def asks(self) -> list[Grant]:
        """The waiting requests a free slot would let start and that have no grant yet (ticket, tokens)."""
        free = self.concurrency - self.in_flight - len(self._granted)
        return [(t, n) for t, n in itertools.islice(self._queue, max(0, free) + len(self._granted))
                if t not in self._granted][:max(0, free)]

    def grant(self, grants: Sequence[Grant]) -> None:
        """Grants from the coordinator; a ticket no longer waiting (cancelled meanwhile) is given back."""
        waiting = {t for t, _ in self._queue}
        for ticket, tokens in grants:
            if ticket in waiting:
                self._granted[ticket] = tokens
            else:
                self._settled -= tokens
        if grants:
            self._notify()

    def take_settlement(self) -> float:
        """Tokens billed beyond the grants since the last call (negative: to give back)."""
        s, self._settled = self._settled, 0.0
        return s

    def take_refusals(self) -> list[float]:
        """Tokens of each request answered 429 since the last call."""
        r, self._refusals = self._refusals, []
        return r

    def unspent(self) -> float:
        """At the end: what was granted and never sent, plus what is not settled yet (tokens to give back)."""
        back = sum(self._granted.values()) - self.take_settlement()
        self._granted.clear()
        return back

    def set_concurrency(self, n: int) -> None:
        if n != self.concurrency:
            self.concurrency = n
            self._notify()

    def pause(self, seconds: float) -> None:
        """Send nothing new for ``seconds`` (a 429's Retry-After, here or on another task of the key)."""
        if seconds > 0:
            self._paused_until = max(self._paused_until, self._clock() + seconds)

    # -- the Limiter protocol --------------------------------------------------------------------
    async def acquire(self, tokens: int) -> None:
        """Wait until this request's ticket is granted, a slot is free and the key is not paused."""
        if self._cond is None:
            self._cond = asyncio.Condition()
        entry = (next(self._tickets), tokens)
        self._queue.append(entry)
        ticket = entry[0]
        if self.on_need is not None:
            self.on_need()
        try:
            async with self._cond:
                while True:
                    wait = self._paused_until - self._clock()
                    if ticket in self._granted and self.in_flight < self.concurrency and wait <= 0:
                        self._queue.remove(entry)
                        self._settled += tokens - self._granted.pop(ticket)  # granted for another estimate
                        self.in_flight += 1
                        return
                    try:  # sleep until a grant, a release or the end of a pause changes the picture
                        await asyncio.wait_for(self._cond.wait(), timeout=min(max(wait, 0.05), 1.0))
                    except asyncio.TimeoutError:
                        pass
        finally:
            if entry in self._queue:  # cancelled (or failed) while waiting: leave the line, give back its grant
                self._queue.remove(entry)
                self._settled -= self._granted.pop(ticket, 0.0)
                self._notify()

    def release(self, tokens_estimated: int, tokens_used: int | None, *, rate_limited: bool = False,
                retry_after: float | None = None, limit: str | None = None) -> None:
        """Free the slot; the difference between estimate and bill goes to the coordinator; a 429 pauses."""
        self.in_flight = max(0, self.in_flight - 1)
        if tokens_used is not None:
            self._settled += tokens_used - tokens_estimated
        if rate_limited:
            self.rate_limited += 1
            self.last_retry_after = retry_after
            self._refusals.append(float(tokens_estimated))
            self.pause(retry_after if retry_after else 1.0)
        if self._queue and self.on_need is not None:
            self.on_need()  # a slot is free: a waiting request may ask
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
        return (f"GrantedLimiter(concurrency={self.concurrency}, in_flight={self.in_flight}, "
                f"waiting={len(self._queue)}, granted={len(self._granted)})")

"""Grants: how the keys' budget reaches the requests of the shard tasks — whole requests, first come first served,
on whichever key of the pool can take them, checked against the job's pace, a model of the server's bucket and
the key's free slots.

**Coordinator side** — ``Pool``: one line of the requests the tasks could start now, in the order the
coordinator first heard of them, whatever task they belong to, and a ``KeyBudget`` per key. The head of the line
is granted, whole (never a part of a request's tokens), on a key — the task's own first, else any other — where

* the **job's pace** is not in debt: request and token buckets refill at ``target`` × the limits, hold at most
  ``burst_seconds`` of it and start empty when the first request asks (the seconds Ray took to start are not
  banked). A grant may take them below zero — the request is paid for after it goes, so the key never idles
  while budget piles up for a big request, which with the server's bucket full meanwhile is budget lost — and
  nothing more goes on the key until they are back at zero, so over time the job sends at ``target`` × the limits;
* the **server's bucket, as modelled**, holds it with a margin: buckets at the limits, holding ``burst_seconds``
  of them, full at the start (an idle key), charged at each grant and settled with the bill. Were every request
  to reach the server the same time after its grant, the server's bucket would be the model's shifted in time;
  the margin covers the differences and estimates not settled yet: ``MARGIN`` of the bucket, or more when
  grants take longer to reach their requests — the refill of the longest recent gap between a task's polls (a
  grant made at another task's poll waits for its own; on a loaded machine those gaps grow) plus ``SEND_LAG``,
  up to ``MAX_MARGIN`` of the bucket (beyond that, seconds-long stalls would idle the key to avoid a 429). A request that needs more than the bucket holds — with the margin, or bigger than the bucket itself,
  which a server admits only when full — goes when the model has been full as long as the excess takes to refill;
* a **slot** is free: requests granted on the key and not reported finished stay under its concurrency limit
  (a grant not yet sent, or a finish not yet reported, counts as in flight: the server never sees more).

Any key can take any request (every task holds every key of the pool), so a pool is one budget: a key whose
own tasks are starting, writing their shards or done serves the others' requests, and the tail of a run,
when one shard is left, has every key. The task's own key goes first so that, while all keys are busy,
requests stay on the key their shard was given (its report line).

What the server billed settles both models of the key the request went on: the estimate was charged at
grant time, the difference follows with the task's next poll; grants a task could not use come back the same
way. A 429 is evidence the key's model was optimistic: both its models are lowered to empty, the key pauses
for the Retry-After, the refused request's tokens go back to the server model (it did not bill them) but not to
the pace (a correction towards caution), and only 429s that recur slow the key down (``Slowdown``).

**Worker side** — ``GrantedLimiter``, the client's ``Limiter`` inside a shard task: a request waits in line
with a ticket until the coordinator grants that ticket on a key, and is sent with that key. The task's pump
reports the waiting requests (``asks``), what the server billed beyond or below the estimates, per key
(``take_settlement``), the 429s (``take_refusals``), and per key how many requests it sent, finished and gave
back (``counts``), and hands the grants back (``grant``).
"""
from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..jina.limits import Slowdown, TokenBucket

__all__ = ["KeyBudget", "Pool", "GrantedLimiter", "Permit", "BURST_SECONDS", "MARGIN", "SEND_LAG", "ASK_TTL"]

BURST_SECONDS = 2.0  # the buckets we assume the API keeps: the shortest a real server is likely to use
MARGIN = 0.1  # of the server's bucket at least: room for grants reaching it out of step, estimates in flight
MAX_MARGIN = 0.5  # of the server's bucket at most
SEND_LAG = 0.05  # seconds from a grant's delivery to its request reaching the server, beyond the poll gaps
LAG_WINDOW = 5.0  # seconds of poll gaps the margin looks back on
ASK_TTL = 2.0  # seconds after which the asks of a task that stopped polling leave the line (tasks poll ~10×/s)

Ask = tuple[int, float]  # (ticket, estimated tokens)
Grant = tuple[int, float, int]  # (ticket, tokens, key)


class KeyBudget:
    """One key: the job's pace, the server's bucket as modelled, the requests in flight on it, its 429s."""

    def __init__(self, rpm: float, tpm: float, concurrency: int, target: float, *,
                 burst_seconds: float = BURST_SECONDS, clock=time.monotonic):
        self.rpm, self.tpm, self.concurrency, self.target = rpm, tpm, concurrency, target
        self.burst_seconds = burst_seconds
        self._clock = clock
        self.slowdown = Slowdown(clock=clock)
        self.paused_until = 0.0
        self.in_flight = 0  # granted and not reported finished
        self.requests = TokenBucket(0, 1, level=0, clock=clock)  # the job's pace (rates set by _apply)
        self.tokens = TokenBucket(0, 1, level=0, clock=clock)
        self.server_requests = TokenBucket(rpm / 60, max(1.0, rpm / 60 * burst_seconds), clock=clock)  # full
        self.server_tokens = TokenBucket(tpm / 60, max(1.0, tpm / 60 * burst_seconds), clock=clock)
        self._apply()

    @property
    def factor(self) -> float:
        """The multiplier recurring 429s put on the job's pace (1.0: none)."""
        return self.slowdown.factor

    def _apply(self) -> None:
        f = self.target * self.factor / 60
        for bucket, per_min in ((self.requests, self.rpm), (self.tokens, self.tpm)):
            bucket.set_rate(per_min * f, max(1.0, per_min * f * self.burst_seconds))

    def start(self) -> None:
        """The first request asks: the pace starts now, empty."""
        self.requests.reset(0)
        self.tokens.reset(0)

    def update(self) -> None:
        if self.slowdown.update(self.paused_until):
            self._apply()

    def fits(self, tokens: float, lag: float = 0.0) -> bool:
        """Whether a request of ``tokens`` may go on this key now, if it reaches the server up to ``lag`` seconds
        later than the grant."""
        return (self.in_flight < self.concurrency and self._clock() >= self.paused_until
                and self.requests.refill() >= 0 and self.tokens.refill() >= 0
                and _holds(self.server_requests, 1, lag) and _holds(self.server_tokens, tokens, lag))

    def take(self, tokens: float) -> None:
        for bucket, amount in ((self.requests, 1), (self.server_requests, 1), (self.tokens, tokens),
                               (self.server_tokens, tokens)):
            bucket.take(amount)
        self.in_flight += 1

    def give_back(self, requests: int, tokens: float) -> None:
        """``requests`` grants of ``tokens`` in all were never sent: their budget and slots come back."""
        for bucket, amount in ((self.requests, requests), (self.server_requests, requests)):
            bucket.give(amount)
        self.settle(-tokens)
        self.in_flight = max(0, self.in_flight - requests)

    def finished(self, requests: int) -> None:
        """``requests`` sent on this key were answered (or failed): their slots are free."""
        self.in_flight = max(0, self.in_flight - requests)

    def settle(self, tokens: float) -> None:
        """The server billed ``tokens`` more than was charged (negative: less)."""
        if tokens:
            self.tokens.take(tokens)
            self.server_tokens.take(tokens)

    def rate_limited(self, retry_after: float | None, tokens: float = 0.0) -> None:
        """A 429 for a request of ``tokens``: both models to empty, the key paused, slower only if they recur."""
        self.paused_until = max(self.paused_until, self._clock() + (retry_after or 1.0))
        self.server_tokens.give(tokens)  # the server did not bill it
        for bucket in (self.requests, self.tokens, self.server_requests, self.server_tokens):
            bucket.at_most(0.0)
        if self.slowdown.refused():
            self._apply()

    def pause_left(self) -> float:
        return max(0.0, self.paused_until - self._clock())


def _holds(bucket: TokenBucket, amount: float, lag: float = 0.0) -> bool:
    """Whether the modelled server bucket holds ``amount`` with the margin (``MARGIN`` of it, or ``lag`` seconds of
    refill); a request bigger than the bucket: whether it has been full for as long as the excess takes to refill."""
    need = min(amount, bucket.capacity) + min(MAX_MARGIN * bucket.capacity,
                                              max(MARGIN * bucket.capacity, lag * bucket.rate))
    if need <= bucket.capacity:
        return bucket.refill() >= need
    return bucket.full_for() * bucket.rate >= need - bucket.capacity


@dataclass
class _Asker:
    home: int  # the key its shard was given
    asked: float = 0.0  # when it last reported its asks
    asking: bool = False  # whether it had any then
    granted: list[Grant] = field(default_factory=list)  # not delivered yet
    sent: dict[int, int] = field(default_factory=dict)  # key -> grants made to it (cumulative)
    done: dict[int, int] = field(default_factory=dict)  # key -> grants it reported finished or given back


class Pool:
    """The keys of a job and one line of the requests its tasks want to send, granted whole on any key."""

    def __init__(self, keys: Sequence[KeyBudget], clock=time.monotonic):
        self.keys = list(keys)
        self._clock = clock
        self.started = False
        self._line: dict[tuple[int, int], tuple[float, float]] = {}  # (shard, ticket) -> (first asked, tokens)
        self._askers: dict[int, _Asker] = {}
        self._gaps: deque[tuple[float, float]] = deque()  # (when, seconds) between polls of a task that had asks

    def join(self, shard: int, home: int) -> None:
        self.leave(shard)
        self._askers[shard] = _Asker(home, asked=self._clock())

    def ask(self, shard: int, asks: Sequence[Ask]) -> None:
        """``shard``'s waiting requests (ticket, estimated tokens) in its own order; replaces what it asked before
        (a ticket it no longer lists was cancelled, or is granted and on its way)."""
        a = self._askers[shard]
        now = self._clock()
        if a.asking:  # a grant made since its last poll waited this long for it
            self._gaps.append((now, now - a.asked))
        a.asked, a.asking = now, bool(asks)
        keep = {ticket for ticket, _ in asks}
        for k in [k for k in self._line if k[0] == shard and k[1] not in keep]:
            del self._line[k]
        delivering = {ticket for ticket, _, _ in a.granted}
        for i, (ticket, tokens) in enumerate(asks):
            if (shard, ticket) not in self._line and ticket not in delivering:
                self._line[(shard, ticket)] = (now + i * 1e-9, float(tokens))  # first heard of: its place

    def report(self, shard: int, done: dict[int, int]) -> None:
        """Cumulative per key: requests ``shard`` has finished or given back; frees their slots."""
        a = self._askers[shard]
        for key, n in done.items():
            new = n - a.done.get(key, 0)
            if new > 0:
                a.done[key] = n
                self.keys[key].finished(new)

    def leave(self, shard: int) -> None:
        """``shard``'s task is gone: its asks leave the line, its undelivered grants come back, its slots free."""
        a = self._askers.pop(shard, None)
        if a is None:
            return
        for k in [k for k in self._line if k[0] == shard]:
            del self._line[k]
        for _, tokens, key in a.granted:
            self.keys[key].give_back(1, tokens)
            a.done[key] = a.done.get(key, 0) + 1
        for key, n in a.sent.items():
            self.keys[key].finished(n - a.done.get(key, 0))

    def take_granted(self, shard: int) -> list[Grant]:
        """The grants made to ``shard`` since it last asked."""
        a = self._askers[shard]
        out, a.granted = a.granted, []
        return out

    def lag(self) -> float:
        """How late a request may reach the server after its grant: the longest recent gap between a task's polls
        (while it had asks), plus ``SEND_LAG``."""
        now = self._clock()
        while self._gaps and self._gaps[0][0] < now - LAG_WINDOW:
            self._gaps.popleft()
        return max((g for _, g in self._gaps), default=0.0) + SEND_LAG

    def grant(self) -> None:
        """Grant whole requests from the head of the line, each on the first key that can take it."""
        now = self._clock()
        for shard in [s for s, a in self._askers.items() if now - a.asked > ASK_TTL]:  # stopped polling: gone
            self.leave(shard)
        for kb in self.keys:
            kb.update()
        if not self._line:
            return
        if not self.started:  # the budget accrues from the first request on
            self.started = True
            for kb in self.keys:
                kb.start()
        lag = self.lag()
        for (shard, ticket), (_, tokens) in sorted(self._line.items(), key=lambda kv: kv[1][0]):
            a = self._askers[shard]
            key = next((k for k in (a.home, *range(len(self.keys))) if self.keys[k].fits(tokens, lag)), None)
            if key is None:
                break
            self.keys[key].take(tokens)
            del self._line[(shard, ticket)]
            a.granted.append((ticket, tokens, key))
            a.sent[key] = a.sent.get(key, 0) + 1


@dataclass(frozen=True)
class Permit:
    """What ``GrantedLimiter.acquire`` gives a request: the key of the pool it goes on."""

    key: int


class GrantedLimiter:
    """The client's ``Limiter`` in a shard task: requests wait in arrival order until the coordinator grants
    their ticket on a key (``Permit``), and are sent with that key; a 429 pauses that key here too."""

    def __init__(self, *, max_asks: int = 8, max_request_tokens: int = 0, on_need: Callable[[], None] | None = None,
                 clock=time.monotonic):
        self.max_asks = max_asks  # waiting requests reported at once (the pool's concurrency: more cannot go)
        self.max_request_tokens = max_request_tokens
        self.on_need = on_need  # wakes the pump: a request waits for a grant, or a slot came free
        self._clock = clock
        self.in_flight = 0
        self.rate_limited = 0  # 429s seen
        self.last_retry_after: float | None = None
        self._paused: dict[int, float] = {}  # key -> until
        self._queue: deque[tuple[int, int]] = deque()  # (ticket, tokens) waiting, arrival order
        self._granted: dict[int, tuple[float, int]] = {}  # ticket -> (tokens, key), not sent yet
        self._tickets = itertools.count()
        self._settled: dict[int, float] = {}  # key -> billed beyond the grants since the last report
        self._refusals: list[tuple[float, int]] = []  # (tokens, key) of requests answered 429 since the last report
        self._done: dict[int, int] = {}  # key -> requests finished or given back (cumulative)
        self._by_key: dict[int, dict[str, int]] = {}  # key -> tokens, requests, 429s of the requests sent on it
        self._cond: asyncio.Condition | None = None

    def request_tokens(self) -> int | None:
        """Largest request (in tokens) worth sending through this limiter; None = no opinion."""
        return self.max_request_tokens or None

    @property
    def waiting(self) -> int:
        return len(self._queue)

    # -- the pump's side ---------------------------------------------------------------------------
    def asks(self) -> list[Ask]:
        """The waiting requests that have no grant yet (ticket, tokens), the first ``max_asks`` at most."""
        room = self.max_asks - len(self._granted)
        return [(t, n) for t, n in itertools.islice(self._queue, max(0, room) + len(self._granted))
                if t not in self._granted][:max(0, room)]

    def grant(self, grants: Sequence[Grant]) -> None:
        """Grants from the coordinator; a ticket no longer waiting (cancelled meanwhile) is given back."""
        waiting = {t for t, _ in self._queue}
        for ticket, tokens, key in grants:
            if ticket in waiting:
                self._granted[ticket] = (tokens, key)
            else:
                self._give_back(tokens, key)
        if grants:
            self._notify()

    def _give_back(self, tokens: float, key: int) -> None:
        self._settled[key] = self._settled.get(key, 0.0) - tokens
        self._done[key] = self._done.get(key, 0) + 1

    def take_settlement(self) -> dict[int, float]:
        """Per key: tokens billed beyond the grants since the last call (negative: to give back)."""
        s, self._settled = self._settled, {}
        return s

    def take_refusals(self) -> list[tuple[float, int]]:
        """(tokens, key) of each request answered 429 since the last call."""
        r, self._refusals = self._refusals, []
        return r

    def done(self) -> dict[int, int]:
        """Per key: requests finished or given back so far (cumulative)."""
        return dict(self._done)

    def by_key(self) -> dict[int, dict[str, int]]:
        """Per key: the tokens billed, requests sent and 429s of this task's requests on it (cumulative)."""
        return {k: dict(c) for k, c in self._by_key.items()}

    def unspent(self) -> tuple[dict[int, float], dict[int, int]]:
        """At the end: what was granted and never sent given back; (settlement, done) to report a last time."""
        for tokens, key in self._granted.values():
            self._give_back(tokens, key)
        self._granted.clear()
        return self.take_settlement(), self.done()

    def pause(self, key: int, seconds: float) -> None:
        """Send nothing new on ``key`` for ``seconds`` (a 429's Retry-After, here or from the coordinator)."""
        if seconds > 0:
            self._paused[key] = max(self._paused.get(key, 0.0), self._clock() + seconds)

    # -- the Limiter protocol --------------------------------------------------------------------
    async def acquire(self, tokens: int) -> Permit:
        """Wait until this request's ticket is granted on a key that is not paused; returns that key."""
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
                    wait = 1.0
                    if ticket in self._granted:
                        granted, key = self._granted[ticket]
                        wait = self._paused.get(key, 0.0) - self._clock()
                        if wait <= 0:
                            del self._granted[ticket]
                            self._queue.remove(entry)
                            if tokens != granted:  # estimated anew since it asked (a retry): settle the difference
                                self._settled[key] = self._settled.get(key, 0.0) + tokens - granted
                            self.in_flight += 1
                            return Permit(key)
                    try:  # sleep until a grant or the end of a pause changes the picture
                        await asyncio.wait_for(self._cond.wait(), timeout=min(max(wait, 0.05), 1.0))
                    except asyncio.TimeoutError:
                        pass
        finally:
            if entry in self._queue:  # cancelled (or failed) while waiting: leave the line, give back its grant
                self._queue.remove(entry)
                if ticket in self._granted:
                    self._give_back(*self._granted.pop(ticket))
                self._notify()

    def release(self, tokens_estimated: int, tokens_used: int | None, *, rate_limited: bool = False,
                retry_after: float | None = None, limit: str | None = None, permit: Permit | None = None) -> None:
        """The request on ``permit.key`` is over: its slot frees, the bill's difference goes to the coordinator,
        a 429 pauses the key here and is reported."""
        key = permit.key if permit is not None else 0
        self.in_flight = max(0, self.in_flight - 1)
        self._done[key] = self._done.get(key, 0) + 1
        c = self._by_key.setdefault(key, {"tokens": 0, "requests": 0, "http_429": 0})
        c["requests"] += 1
        c["tokens"] += tokens_used or 0
        c["http_429"] += rate_limited
        if tokens_used is not None:
            self._settled[key] = self._settled.get(key, 0.0) + tokens_used - tokens_estimated
        if rate_limited:
            self.rate_limited += 1
            self.last_retry_after = retry_after
            self._refusals.append((float(tokens_estimated), key))
            self.pause(key, retry_after if retry_after else 1.0)
        if self.on_need is not None:
            self.on_need()  # report the free slot (and any waiting request) now
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
        return (f"GrantedLimiter(in_flight={self.in_flight}, waiting={len(self._queue)}, "
                f"granted={len(self._granted)})")

"""Grants, request by request: whole requests first come first served across the tasks, on any key of the pool,
the job's pace paid in arrears, a model of the server's bucket (full at the start, exact rates, a margin), free
slots, settlement with what the server billed, 429s (fake clock for the coordinator side; a real event loop for
the worker side)."""
import asyncio

import pytest

from jinabatch.embed.grants import ASK_TTL, MARGIN, GrantedLimiter, KeyBudget, Permit, Pool


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


class OneKey:
    """A pool of one key, asked through shards 0..9 (each joined with that key as its own)."""

    def __init__(self, rpm=6000, tpm=600_000, target=1.0, concurrency=64, keys=1):
        self.clock = Clock()
        self.pool = Pool([KeyBudget(rpm, tpm, concurrency, target, clock=self.clock) for _ in range(keys)],
                         clock=self.clock)
        for s in range(10):
            self.pool.join(s, s % keys)
        self.tokens = self.pool.keys[0].tokens  # the job's pace
        self.server_tokens = self.pool.keys[0].server_tokens

    def ask(self, shard, asks):
        self.pool.ask(shard, asks)

    def grant(self):
        self.pool.grant()

    def take_granted(self, shard):
        return self.pool.take_granted(shard)

    def settle(self, tokens):
        self.pool.keys[0].settle(tokens)

    def rate_limited(self, retry_after, tokens=0.0):
        self.pool.keys[0].rate_limited(retry_after, tokens)

    def pause_left(self):
        return self.pool.keys[0].pause_left()

    @property
    def factor(self):
        return self.pool.keys[0].factor


def budget(rpm=6000, tpm=600_000, target=1.0, **kw) -> tuple[OneKey, Clock]:
    """600k TPM = 10,000 tokens a second; the server's bucket: 2 s = 20,000 tokens, full."""
    kb = OneKey(rpm, tpm, target, **kw)
    return kb, kb.clock


def granted(kb, shard: int) -> list[float]:
    return [tokens for _, tokens, _ in kb.take_granted(shard)]


def test_the_first_request_goes_at_once_and_the_pace_starts_then_not_at_the_coordinators_creation():
    """No burst at the start: the budget of the seconds Ray took to start is not banked."""
    kb, clock = budget()
    clock.t += 30
    kb.ask(0, [(1, 2500), (2, 2500), (3, 2500)])
    kb.grant()
    assert granted(kb, 0) == [2500]  # the pace is in debt now: 2,500 tokens = 0.25 s
    clock.t += 0.24
    kb.grant()
    assert granted(kb, 0) == []
    clock.t += 0.02
    kb.grant()
    assert granted(kb, 0) == [2500]


def test_over_ten_seconds_the_grants_are_the_paces_rate_plus_one_request():
    kb, clock = budget(target=0.9)
    total = 0.0
    for step in range(100):
        for s in range(4):
            kb.ask(s, [(step * 10 + i, 3000) for i in range(5)])
        kb.grant()
        total += sum(sum(granted(kb, s)) for s in range(4))
        clock.t += 0.1
    assert 9_000 * 9.9 - 3000 <= total <= 9_000 * 10 + 3000  # 0.9 × 10,000 a second, paid in arrears


def test_the_line_is_first_come_first_served_across_tasks_so_a_big_request_is_not_starved():
    kb, clock = budget(tpm=60_000)  # 1,000 tokens a second; server bucket 2,000
    kb.ask(0, [(1, 100)])
    kb.grant()
    assert granted(kb, 0) == [100]
    kb.ask(0, [(2, 1500)])  # a big one, first in line
    clock.t += 0.05
    kb.ask(1, [(1, 50), (2, 50), (3, 50)])  # small ones of another task, later
    for _ in range(40):
        clock.t += 0.05
        kb.grant()
        g0, g1 = granted(kb, 0), granted(kb, 1)
        if g0 or g1:
            break
    assert g0 == [1500] and g1 == []  # the big one went first, then the pace was in debt


def test_after_an_idle_moment_the_burst_stays_inside_the_servers_bucket_less_the_margin():
    """The job's pace is full (2 s), the server's bucket too; a burst may not empty the server's bucket."""
    kb, clock = budget()
    kb.ask(0, [(0, 1)])
    kb.grant()
    granted(kb, 0)
    kb.ask(0, [])  # nothing waits
    clock.t += 5  # idle: both full
    kb.ask(0, [(i, 1000) for i in range(1, 40)])
    kb.grant()
    burst = sum(granted(kb, 0))
    room = 20_000 * (1 - MARGIN)
    assert room - 1000 <= burst <= room


def test_a_request_bigger_than_the_servers_bucket_waits_until_it_has_been_full_for_the_excess():
    """A server admits it only when its bucket is full; the job waits for the modelled bucket to have been full
    for as long as the excess over it (with the margin) takes to refill, then pays for it in arrears."""
    kb, clock = budget(tpm=150_000)  # 2,500 tokens a second, bucket 5,000
    kb.ask(0, [(1, 4000)])
    kb.grant()
    assert granted(kb, 0) == [4000]  # the model holds it with the margin (4,500 of 5,000)
    kb.ask(0, [(2, 8192)])
    clock.t += 1.7  # the pace is out of debt; the model is full since 1.6 s: 250 tokens' worth, not the margin's 500
    kb.grant()
    assert granted(kb, 0) == []
    clock.t += 0.15  # full for 0.25 s: 625 tokens' worth
    kb.grant()
    assert granted(kb, 0) == [8192]
    assert kb.tokens.refill() == pytest.approx(2500 * 0.25 - 8192)  # in debt for what it took


def test_what_the_server_billed_settles_both_models():
    kb, clock = budget()
    kb.ask(0, [(1, 1000)])
    kb.grant()
    granted(kb, 0)
    before = kb.tokens.refill(), kb.server_tokens.refill()
    kb.settle(300)  # billed 300 more than estimated
    assert kb.tokens.refill() == pytest.approx(before[0] - 300)
    assert kb.server_tokens.refill() == pytest.approx(before[1] - 300)
    kb.settle(-200)
    assert kb.tokens.refill() == pytest.approx(before[0] - 100)


def test_an_isolated_429_pauses_the_key_and_empties_both_models_but_does_not_slow_it():
    kb, clock = budget()
    kb.ask(0, [(1, 1000)])
    kb.grant()
    granted(kb, 0)
    kb.rate_limited(2.0, 1000)
    assert kb.pause_left() == pytest.approx(2.0) and kb.factor == 1.0
    assert kb.tokens.refill() <= 0 and kb.server_tokens.refill() <= 0
    kb.ask(0, [(2, 10)])
    kb.grant()
    assert granted(kb, 0) == []  # paused
    clock.t += 3  # 429s 5 s apart: the key has less than configured
    kb.rate_limited(1.0, 10)
    assert kb.factor == pytest.approx(0.85) and kb.tokens.rate == pytest.approx(10_000 * 0.85)


def test_a_task_that_stops_polling_leaves_the_line_so_it_blocks_no_one():
    kb, clock = budget(tpm=60_000)  # 1,000 tokens a second
    kb.ask(9, [(1, 1500)])
    kb.grant()
    assert granted(kb, 9) == [1500]  # the pace is 1.5 s in debt
    kb.ask(7, [(1, 400)])  # first in line; then its worker dies
    clock.t += 0.01
    kb.ask(8, [(1, 300)])
    clock.t += ASK_TTL
    for s in (8, 9):
        kb.ask(s, [(1, 300)] if s == 8 else [])
    kb.grant()
    assert granted(kb, 8) == [300]
    with pytest.raises(KeyError):
        kb.take_granted(7)  # task 7 is out of the pool


def test_a_task_that_ends_gives_back_the_grants_it_was_never_handed_and_its_slots():
    kb, clock = budget(concurrency=2)
    key = kb.pool.keys[0]
    kb.ask(7, [(1, 500), (2, 500)])
    kb.grant()
    clock.t += 0.1
    kb.ask(7, [(1, 500), (2, 500)])
    kb.grant()  # both granted (every slot); task 7 ends before its next poll
    kb.ask(8, [(1, 100)])
    kb.grant()
    assert granted(kb, 8) == [] and key.in_flight == 2  # no slot left
    levels = kb.tokens.refill(), kb.server_tokens.refill(), key.requests.refill()
    kb.pool.leave(7)
    assert key.in_flight == 0
    assert (kb.tokens.refill(), kb.server_tokens.refill(), key.requests.refill()) == pytest.approx(
        (levels[0] + 1000, min(20_000, levels[1] + 1000), levels[2] + 2))


def test_a_key_never_has_more_requests_in_flight_than_its_limit_and_finished_ones_free_their_slots():
    kb, clock = budget(concurrency=3)
    for _ in range(5):
        kb.ask(0, [(i, 10) for i in range(6)])
        kb.grant()
        clock.t += 1
    assert len(granted(kb, 0)) == 3
    kb.pool.report(0, {0: 2})  # two answered
    kb.pool.report(0, {0: 2})  # the same report again changes nothing
    kb.ask(0, [(i, 10) for i in range(3, 6)])
    kb.grant()
    assert len(granted(kb, 0)) == 2


def test_a_pool_is_one_budget_a_key_with_nothing_to_do_serves_the_other_keys_requests():
    """The tail of a run: one shard left, on key 0; key 1's shards are done. Its budget is not lost."""
    pool = OneKey(tpm=60_000, keys=2)  # 1,000 tokens a second per key
    got = {0: 0.0, 1: 0.0}
    for step in range(100):  # 10 s of shard 0 (key 0's) asking for more than one key has
        pool.ask(0, [(step * 10 + i, 500) for i in range(4)])
        pool.grant()
        for _, tokens, key in pool.take_granted(0):
            got[key] += tokens
        pool.pool.report(0, {k: 100 * (step + 1) for k in (0, 1)})  # everything answered at once
        pool.clock.t += 0.1
    assert got[0] == pytest.approx(10_000, rel=0.06) and got[1] == pytest.approx(10_000, rel=0.06)


def test_while_every_key_is_busy_a_task_stays_on_its_own_key():
    pool = OneKey(tpm=60_000, keys=2)
    seen = {0: set(), 1: set()}
    for step in range(50):
        for s in (0, 1):  # task 0 on key 0, task 1 on key 1, both asking for more than a key has
            pool.ask(s, [(step * 10 + i, 500) for i in range(4)])
        pool.grant()
        for s in (0, 1):
            seen[s] |= {key for _, _, key in pool.take_granted(s)}
            pool.pool.report(s, {k: 100 * (step + 1) for k in (0, 1)})
        pool.clock.t += 0.1
    assert seen == {0: {0}, 1: {1}}


# -- the worker side ------------------------------------------------------------------------------------
def test_a_request_waits_for_its_ticket_and_goes_with_the_key_it_was_granted_on():
    lim = GrantedLimiter(max_asks=2)
    woken = []
    lim.on_need = lambda: woken.append(1)

    async def go():
        reqs = [asyncio.ensure_future(lim.acquire(t)) for t in (300, 200, 100)]
        await asyncio.sleep(0.02)
        asks = lim.asks()
        lim.grant([(asks[0][0], 300, 1)])
        await asyncio.sleep(0.02)
        state = ([r.done() for r in reqs], lim.asks(), reqs[0].result())
        for r in reqs[1:]:
            r.cancel()
        await asyncio.sleep(0.01)
        return asks, state

    asks, (done, after, permit) = asyncio.run(go())
    assert [t for _, t in asks] == [300, 200] and woken  # two at most; the pump was woken
    assert done == [True, False, False] and [t for _, t in after] == [200, 100] and permit == Permit(1)


def test_the_worker_reports_the_bill_per_key_gives_back_grants_it_could_not_use_and_its_429s():
    lim = GrantedLimiter(max_asks=4)

    async def go():
        first = asyncio.ensure_future(lim.acquire(400))
        await asyncio.sleep(0.01)
        lim.grant([(lim.asks()[0][0], 400, 1)])
        permit = await asyncio.wait_for(first, 2)
        lim.release(400, 450, permit=permit)  # billed 50 more, on key 1
        second = asyncio.ensure_future(lim.acquire(100))
        await asyncio.sleep(0.01)
        ticket = lim.asks()[0][0]
        second.cancel()  # the shard failed meanwhile
        await asyncio.sleep(0.01)
        lim.grant([(ticket, 100, 0)])  # the grant arrives for a request that is gone: it goes back
        await asyncio.sleep(0.01)
        return lim.take_settlement()

    assert asyncio.run(go()) == pytest.approx({1: 50, 0: -100})
    assert lim.done() == {1: 1, 0: 1}  # one answered on key 1, one given back on key 0
    assert lim.by_key() == {1: {"tokens": 450, "requests": 1, "http_429": 0}}
    lim.release(200, None, rate_limited=True, retry_after=3.0, permit=Permit(0))
    assert lim.take_refusals() == [(200.0, 0)] and lim.take_refusals() == []
    assert lim.unspent() == ({}, {1: 1, 0: 2})


def test_the_margin_grows_when_grants_wait_longer_for_their_tasks_polls():
    """On a loaded machine a task polls late, and a grant made at another task's poll reaches its request late:
    the server's bucket is then further behind the model, so the margin is the refill of the longest recent gap."""
    kb, clock = budget()  # 10,000 tokens a second; bucket 20,000
    kb.ask(1, [(1, 1)])
    kb.grant()
    granted(kb, 1)
    clock.t += 0.8  # task 1 polls 0.8 s after its last poll, with asks outstanding
    kb.ask(1, [(2, 1)])
    assert kb.pool.lag() == pytest.approx(0.8 + 0.05)
    kb.ask(0, [(i, 1000) for i in range(1, 40)])
    kb.grant()
    burst = sum(granted(kb, 0))
    assert burst <= 20_000 - 10_000 * 0.85  # 8,500 of margin rather than the 2,000 of the 10%

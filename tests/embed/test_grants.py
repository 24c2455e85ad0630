"""Grants, request by request: whole requests first come first served across a key's tasks, the job's pace paid in
arrears, a model of the server's bucket (full at the start, exact rates, a margin), settlement with what the
server billed, 429s (fake clock for the coordinator side; a real event loop for the worker side)."""
import asyncio

import pytest

from jinabatch.embed.grants import ASK_TTL, MARGIN, GrantedLimiter, KeyBudget


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def budget(rpm=6000, tpm=600_000, target=1.0, **kw) -> tuple[KeyBudget, Clock]:
    """600k TPM = 10,000 tokens a second; the server's bucket: 2 s = 20,000 tokens, full."""
    clock = Clock()
    return KeyBudget(rpm, tpm, 8, target, clock=clock, **kw), clock


def granted(kb: KeyBudget, shard: int) -> list[float]:
    return [tokens for _, tokens in kb.take_granted(shard)]


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
    kb.ask(8, [(1, 300)])
    kb.grant()
    assert granted(kb, 8) == [300] and kb.take_granted(7) == []


def test_a_task_that_ends_gives_back_the_grants_it_was_never_handed():
    kb, clock = budget()
    kb.ask(7, [(1, 500)])
    kb.grant()  # granted; task 7 ends before its next poll
    levels = kb.tokens.refill(), kb.server_tokens.refill(), kb.requests.refill()
    assert kb.drop(7) == 500
    assert (kb.tokens.refill(), kb.server_tokens.refill(), kb.requests.refill()) == pytest.approx(
        (levels[0] + 500, levels[1] + 500, levels[2] + 1))


# -- the worker side ------------------------------------------------------------------------------------
def test_a_request_waits_for_its_ticket_and_the_asks_are_what_free_slots_would_start():
    lim = GrantedLimiter(concurrency=2)
    woken = []
    lim.on_need = lambda: woken.append(1)

    async def go():
        reqs = [asyncio.ensure_future(lim.acquire(t)) for t in (300, 200, 100)]
        await asyncio.sleep(0.02)
        asks = lim.asks()
        lim.grant([(asks[0][0], 300)])
        await asyncio.sleep(0.02)
        state = ([r.done() for r in reqs], lim.asks())
        for r in reqs:
            r.cancel()
        await asyncio.sleep(0.01)
        return asks, state

    asks, (done, after) = asyncio.run(go())
    assert [t for _, t in asks] == [300, 200] and woken  # two slots: the first two; the pump was woken
    assert done == [True, False, False] and [t for _, t in after] == [200]  # one slot left


def test_the_worker_reports_the_bill_gives_back_grants_it_could_not_use_and_its_429s():
    lim = GrantedLimiter(concurrency=1)

    async def go():
        first = asyncio.ensure_future(lim.acquire(400))
        await asyncio.sleep(0.01)
        lim.grant(lim.asks() and [(lim.asks()[0][0], 400)])
        await asyncio.wait_for(first, 2)
        lim.release(400, 450)  # billed 50 more
        second = asyncio.ensure_future(lim.acquire(100))
        await asyncio.sleep(0.01)
        ticket = lim.asks()[0][0]
        second.cancel()  # the shard failed meanwhile
        await asyncio.sleep(0.01)
        lim.grant([(ticket, 100)])  # the grant arrives for a request that is gone: it goes back
        await asyncio.sleep(0.01)
        return lim.take_settlement()

    assert asyncio.run(go()) == pytest.approx(50 - 100)
    lim.release(200, None, rate_limited=True, retry_after=3.0)
    assert lim.take_refusals() == [200.0] and lim.take_refusals() == []
    assert lim.unspent() == 0

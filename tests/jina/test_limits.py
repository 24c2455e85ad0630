"""Per-client limiter: shares add up to the budget, buckets pace requests and tokens, a 429 pauses, recurring
429s slow it down."""
import asyncio
import time

import pytest

from jinabatch.jina.limits import Share, Slowdown, TokenBucket, Wakeup, WorkerLimiter, share_of


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


@pytest.mark.parametrize("active", [1, 2, 3, 4, 5, 7])
def test_shares_of_active_workers_add_up_to_the_budget_and_never_exceed_it(active):
    shares = [share_of(500, 1_000_000, 5, active=active, rank=r) for r in range(active)]
    assert sum(s.rpm for s in shares) == pytest.approx(500)
    assert sum(s.tpm for s in shares) == pytest.approx(1_000_000)
    if active <= 5:
        assert sum(s.concurrency for s in shares) == 5
    assert all(s.concurrency >= 1 for s in shares)


def test_fewer_active_workers_get_a_bigger_share():
    assert share_of(600, 600_000, 4, active=1, rank=0) == Share(600, 600_000, 4)
    assert share_of(600, 600_000, 4, active=4, rank=0) == Share(150, 150_000, 1)


def test_target_leaves_headroom():
    assert share_of(1000, 1000, 2, active=2, rank=0, target=0.9).tpm == pytest.approx(450)


def test_bucket_refills_at_rate_and_caps_at_capacity():
    clock = FakeClock()
    b = TokenBucket(10, 20, clock=clock)
    b.take(20)
    assert b.wait_time(5) == pytest.approx(0.5)
    clock.t += 100
    assert b.wait_time(20) == 0 and b.level == 20


def test_request_bigger_than_capacity_waits_for_a_full_bucket_then_goes_negative():
    clock = FakeClock()
    b = TokenBucket(10, 20, clock=clock)
    b.take(15)
    assert b.wait_time(50) == pytest.approx(1.5)  # needs the bucket full (20), not 50
    clock.t += 1.5
    b.take(50)
    assert b.level == pytest.approx(-30)
    assert b.wait_time(1) == pytest.approx(3.1)


def test_limiter_paces_tokens_to_its_share():
    """Over a simulated minute the limiter admits about its TPM share, not more."""
    async def run():
        lim = WorkerLimiter(Share(rpm=100_000, tpm=60_000, concurrency=4), burst_seconds=1)
        admitted, t0 = 0, time.monotonic()
        while time.monotonic() - t0 < 1.0:
            await lim.acquire(100)
            lim.release(100, 100)
            admitted += 100
        return admitted, time.monotonic() - t0

    admitted, elapsed = asyncio.run(run())
    # 1000 tokens/s plus one initial burst of 1000
    assert admitted <= 1000 * elapsed + 1000 + 100
    assert admitted >= 1000 * elapsed * 0.8


def test_settling_charges_the_difference_between_estimate_and_usage():
    clock = FakeClock()
    lim = WorkerLimiter(Share(rpm=6000, tpm=6000, concurrency=2), burst_seconds=1, clock=clock)
    asyncio.run(lim.acquire(50))
    lim.release(50, 80)  # server counted 30 more than estimated
    assert lim.levels()[1] == pytest.approx(100 - 80)


def test_concurrency_share_blocks_extra_requests_until_release():
    async def run():
        lim = WorkerLimiter(Share(rpm=1e6, tpm=1e9, concurrency=2))
        await lim.acquire(1)
        await lim.acquire(1)
        third = asyncio.create_task(lim.acquire(1))
        await asyncio.sleep(0.05)
        blocked = not third.done()
        lim.release(1, 1)
        await asyncio.wait_for(third, 2)
        return blocked, lim.in_flight

    blocked, in_flight = asyncio.run(run())
    assert blocked and in_flight == 2


def test_an_isolated_429_pauses_for_retry_after_and_empties_the_buckets_without_slowing_down():
    """One refusal says the server's bucket was short for a moment, not that the limits are wrong: cutting the
    rate would pay for it with seconds of budget (issue 25: nine 429s cost 17% of a run)."""
    clock = FakeClock()
    lim = WorkerLimiter(Share(rpm=600, tpm=60_000, concurrency=2), clock=clock)
    full = lim.rates()
    lim.release(0, None, rate_limited=True, retry_after=3)
    assert lim.factor == 1.0 and lim.rates() == full and lim.rate_limited == 1
    assert lim.levels() == (0, 0)

    async def go():
        started = asyncio.ensure_future(lim.acquire(1))
        await asyncio.sleep(0.05)
        paused = not started.done()
        clock.t += 3.5  # the pause is over, and the buckets have refilled
        lim.set_concurrency(3)  # wakes the waiting request
        await asyncio.wait_for(started, 2)
        return paused

    assert asyncio.run(go())


def test_429s_that_recur_cut_the_rates_once_per_episode_and_quiet_seconds_bring_them_back():
    clock = FakeClock()
    lim = WorkerLimiter(Share(rpm=600, tpm=60_000, concurrency=2), clock=clock,
                        slowdown=Slowdown(cut=0.8, recover=0.1, window=10, clock=clock))
    full_tpm = lim.rates()[1]
    lim.release(0, None, rate_limited=True, retry_after=1)
    clock.t += 0.5
    lim.release(0, None, rate_limited=True, retry_after=1)  # same second: the same episode
    assert lim.factor == 1.0
    clock.t += 3
    lim.release(0, None, rate_limited=True, retry_after=2)  # again, within 10 s: the key has less than configured
    assert lim.factor == pytest.approx(0.8) and lim.rates()[1] == pytest.approx(full_tpm * 0.8)
    clock.t += 1  # still paused: no recovery yet
    lim._recover()
    assert lim.factor == pytest.approx(0.8)
    clock.t += 2  # pause over 1 s ago: +10%
    lim._recover()
    assert lim.factor == pytest.approx(0.9)
    clock.t += 60
    lim._recover()
    assert lim.factor == 1.0 and lim.rates()[1] == pytest.approx(full_tpm)


def test_a_429_after_a_quiet_window_is_isolated_again():
    clock = FakeClock()
    slow = Slowdown(window=10, clock=clock)
    assert not slow.refused()
    clock.t += 11
    assert not slow.refused() and slow.factor == 1.0
    clock.t += 2
    assert slow.refused() and slow.factor == pytest.approx(0.85)


def test_bucket_knows_how_long_it_has_been_full_and_can_start_over():
    clock = FakeClock()
    b = TokenBucket(10, 20, level=15, clock=clock)
    assert b.full_for() == 0
    clock.t += 2  # full after 0.5 s
    assert b.full_for() == pytest.approx(1.5)
    b.take(1)
    assert b.full_for() == 0
    b.reset(0)
    clock.t += 1
    assert b.refill() == pytest.approx(10)  # what it would have gathered before the reset does not count
    b.at_most(4)
    assert b.level == 4
    b.give(100)
    assert b.level == 20  # never above capacity


def test_new_share_changes_rates_without_resetting_debt():
    clock = FakeClock()
    lim = WorkerLimiter(Share(rpm=600, tpm=60_000, concurrency=1), clock=clock, burst_seconds=1)
    asyncio.run(lim.acquire(3000))  # the bucket holds 1,000: the request goes on a full bucket, 2,000 in debt
    level = lim.levels()[1]
    lim.set_share(Share(rpm=1200, tpm=120_000, concurrency=2))
    assert level == pytest.approx(-2000)
    assert lim.rates()[1] == pytest.approx(2000) and lim.levels()[1] == pytest.approx(level)
    assert "factor" in repr(lim)


def test_requests_are_admitted_in_arrival_order_so_a_big_one_is_not_starved_by_small_ones():
    """A 900-token request waiting for budget is not overtaken by 100-token requests that came after it."""
    clock = FakeClock()
    lim = WorkerLimiter(Share(rpm=1e6, tpm=60_000, concurrency=8), burst_seconds=1, clock=clock,
                        start_levels=(1e6, 0))

    async def run():
        order = []

        async def req(name, tokens):
            await lim.acquire(tokens)
            order.append(name)

        tasks = [asyncio.ensure_future(req("big", 900))]
        await asyncio.sleep(0)
        tasks += [asyncio.ensure_future(req(f"small{i}", 100)) for i in range(3)]
        for _ in range(40):  # 0.1 s of budget (100 tokens) at a time
            await asyncio.sleep(0.01)
            clock.t += 0.1
            lim._notify()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        return order

    assert asyncio.run(run())[0] == "big"


def test_a_request_cancelled_while_waiting_leaves_the_line_and_the_next_one_goes():
    """A waiting request whose task is cancelled (a failed shard, a TaskGroup) must not block those behind it."""
    clock = FakeClock()
    lim = WorkerLimiter(Share(rpm=60, tpm=6_000, concurrency=1), clock=clock, start_levels=(0, 0))

    async def run():
        first = asyncio.ensure_future(lim.acquire(100))
        second = asyncio.ensure_future(lim.acquire(100))
        await asyncio.sleep(0.02)
        first.cancel()
        clock.t += 1  # budget for one request
        lim.set_concurrency(1)
        lim._notify()
        await asyncio.wait_for(second, 2)
        return lim.waiting, lim.in_flight

    assert asyncio.run(run()) == (0, 1)


def test_wakeup_wakes_every_waiter_and_a_waiter_cancelled_or_timed_out_leaves_nothing_held():
    """The limiters' waits (no lock to re-acquire: with asyncio.Condition + wait_for on 3.11 a timed-out or
    cancelled wait could leave the lock broken and the task's end waiting forever)."""
    async def go():
        wake = Wakeup()
        timed_out = [asyncio.ensure_future(wake.wait(0.001)) for _ in range(50)]
        cancelled = [asyncio.ensure_future(wake.wait(60)) for _ in range(50)]
        await asyncio.sleep(0.01)
        for t in cancelled:
            t.cancel()
        await asyncio.wait_for(asyncio.gather(*timed_out, *cancelled, return_exceptions=True), 1)
        woken = [asyncio.ensure_future(wake.wait(60)) for _ in range(3)]
        await asyncio.sleep(0)
        wake.notify()
        await asyncio.wait_for(asyncio.gather(*woken), 1)  # woken by notify, not by their 60 s
        return [t.cancelled() for t in cancelled]

    assert all(asyncio.run(go()))

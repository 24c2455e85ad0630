"""Per-worker limiter: shares add up to the budget, buckets pace requests and tokens, 429s slow it down."""
import asyncio
import time

import pytest

from jinabatch.jina.limits import Share, TokenBucket, WorkerLimiter, share_of


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
    assert lim._tokens.level == pytest.approx(100 - 80)


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


def test_429_lowers_the_rate_pauses_for_retry_after_and_recovers():
    clock = FakeClock()
    lim = WorkerLimiter(Share(rpm=600, tpm=60_000, concurrency=2), clock=clock, recovery_per_s=0.1)
    full = lim._tokens.rate
    lim.release(0, None, rate_limited=True, retry_after=3)
    assert lim.factor == pytest.approx(0.7) and lim._tokens.rate == pytest.approx(full * 0.7)
    assert lim.rate_limited == 1
    clock.t += 1  # still paused: no recovery yet
    lim._recover()
    assert lim.factor == pytest.approx(0.7)
    clock.t += 2.5  # pause over
    lim._recover()
    clock.t += 1
    lim._recover()
    assert 0.7 < lim.factor <= 1.0
    clock.t += 60
    lim._recover()
    assert lim.factor == 1.0 and lim._tokens.rate == pytest.approx(full)


def test_new_share_changes_rates_without_resetting_debt():
    clock = FakeClock()
    lim = WorkerLimiter(Share(rpm=600, tpm=60_000, concurrency=1), clock=clock, burst_seconds=1)
    lim._tokens.take(3000)
    level = lim._tokens.level
    lim.set_share(Share(rpm=1200, tpm=120_000, concurrency=2))
    assert lim._tokens.rate == pytest.approx(2000) and lim._tokens.level == pytest.approx(level)
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


def test_a_fed_limiter_sends_only_what_it_is_granted_and_says_what_its_waiting_requests_lack():
    woken = []
    lim = WorkerLimiter(Share(rpm=0, tpm=0, concurrency=2), fed=True, on_need=lambda: woken.append(1))

    async def run():
        first = asyncio.ensure_future(lim.acquire(300))
        second = asyncio.ensure_future(lim.acquire(200))
        await asyncio.sleep(0.02)
        lacking = lim.demand()
        lim.grant(1, 300)  # enough for the first only
        await asyncio.sleep(0.02)
        state = (first.done(), second.done(), lim.demand())
        lim.grant(1, 200)
        await asyncio.wait_for(second, 2)
        return lacking, state

    lacking, (first_done, second_done, after) = asyncio.run(run())
    assert lacking == (2, 500) and woken  # both can start (two slots): 2 requests, 500 tokens; the pump was woken
    assert first_done and not second_done and after == (1, 200)


def test_a_fed_limiter_hands_back_what_it_did_not_spend_and_settles_debt():
    lim = WorkerLimiter(Share(rpm=0, tpm=0, concurrency=1), fed=True)
    lim.grant(3, 1000)
    asyncio.run(lim.acquire(400))
    lim.release(400, 500)  # the server counted 100 more than estimated
    assert lim.take_levels() == (2, 500) and lim.levels() == (0, 0)


def test_a_request_cancelled_while_waiting_leaves_the_line_and_the_next_one_goes():
    """A waiting request whose task is cancelled (a failed shard, a TaskGroup) must not block those behind it."""
    lim = WorkerLimiter(Share(rpm=0, tpm=0, concurrency=1), fed=True)

    async def run():
        first = asyncio.ensure_future(lim.acquire(100))
        second = asyncio.ensure_future(lim.acquire(100))
        await asyncio.sleep(0.02)
        first.cancel()
        lim.grant(1, 100)
        await asyncio.wait_for(second, 2)
        return lim.waiting, lim.in_flight

    assert asyncio.run(run()) == (0, 1)

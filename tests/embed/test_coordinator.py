"""The coordinator grants the keys' budget to the requests of whichever shard tasks ask, first come first
served, on any key of the pool, never more in flight on a key than its limit; it spreads tasks over the keys and
keeps every attempt's spend, per key by where each request went (fake clock). The grant rules themselves:
tests/embed/test_grants.py."""
import pytest

from jinabatch.config import parse_config
from jinabatch.embed.coordinator import Coordinator, KeyBudget
from jinabatch.embed.task import request_token_budget

ZERO = {"rows": 0, "tokens": 0, "requests": 0, "http_429": 0, "retries": 0}


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def coordinator(**kw) -> tuple[Coordinator, Clock]:
    clock = Clock()
    args = dict(rpm=600, tpm=600_000, concurrency=4, workers=2, target=1.0)
    args.update(kw)
    return Coordinator(**args, clock=clock), clock


def asks(first: int, n: int, tokens: float) -> list[tuple[int, float]]:
    return [(first + i, tokens) for i in range(n)]


def tokens(reply: dict) -> float:
    return sum(t for _, t, _ in reply["granted"])


def done(*counts: int) -> dict[int, int]:
    """Cumulative finished requests per key (a growing count: everything answered, slots are not the point)."""
    return {k: n for k, n in enumerate(counts)}


def test_the_budget_starts_with_the_first_request_only_and_accrues_at_the_keys_rate():
    """No burst at the start: nothing piles up before the first request asks; it goes, then 10,000 tokens a
    second (600k TPM) go, paid for as they go."""
    c, clock = coordinator()
    c.register(0)
    clock.t += 30  # tasks starting up: no budget piles up meanwhile
    first = c.poll(0, ZERO, asks(0, 4, 2_500))
    assert [t for _, t, _ in first["granted"]] == [2_500]
    clock.t += 0.5
    assert tokens(c.poll(0, ZERO, asks(1, 3, 2_500))) == pytest.approx(5_000)


def test_grants_never_exceed_the_keys_rate_however_many_tasks_ask():
    c, clock = coordinator(workers=4)
    for s in range(4):
        c.register(s)
    granted = 0.0
    for step in range(100):  # 10 s of four tasks asking for more than there is (5 requests of 3,000 tokens each)
        clock.t += 0.1
        for s in range(4):
            granted += tokens(c.poll(s, ZERO, asks(step * 10, 5, 3_000), done=done(100 * step)))
    assert granted <= 10_000 * 10.0 + 3_000 + 1e-6  # the rate, plus the first request
    assert granted >= 10_000 * 9.8  # and what there is goes out


def test_a_task_that_stops_asking_leaves_the_whole_rate_to_the_others():
    """Start-up, draining or writing a shard: the others take the budget at once, not a share of it."""
    c, clock = coordinator(workers=2)
    c.register(0)
    c.register(1)
    got = tokens(c.poll(0, ZERO, asks(0, 1, 1)))  # the budget starts
    for step in range(10):
        clock.t += 0.1
        got += tokens(c.poll(0, ZERO, asks(10 + step * 10, 3, 2_000), done=done(100 * step)))  # 1 asks nothing
    assert got == pytest.approx(10_000, rel=0.06)


def test_what_a_task_leaves_unspent_goes_back_to_its_key():
    c, clock = coordinator()
    c.register(0)
    c.poll(0, ZERO, asks(0, 1, 1))
    clock.t += 1.0
    c.poll(0, ZERO, asks(1, 1, 4_000))  # granted, never sent
    kb = c.keys[0]
    level = kb.tokens.refill()
    c.unregister(0, ZERO, settled={0: -4_000.0}, done=done(2))
    assert kb.tokens.refill() == pytest.approx(level + 4_000) and kb.in_flight == 0


def test_what_the_server_billed_beyond_the_estimates_delays_the_next_grants():
    c, clock = coordinator()
    c.register(0)
    c.poll(0, ZERO, asks(0, 1, 5_000))  # 0.5 s of budget, paid in arrears
    clock.t += 0.5
    assert tokens(c.poll(0, ZERO, asks(1, 1, 100), settled={0: 1_000})) == 0  # billed 1,000 more
    clock.t += 0.1
    assert tokens(c.poll(0, ZERO, asks(1, 1, 100))) == 100


def test_a_key_never_has_more_requests_in_flight_than_its_limit_whichever_tasks_ask():
    c, clock = coordinator(concurrency=5, workers=2)
    c.register(0)
    c.register(1)
    got = [0, 0]
    for step in range(20):  # plenty of budget: only the slots bind
        clock.t += 0.5
        for s in (0, 1):
            got[s] += len(c.poll(s, ZERO, asks(step * 10, 4, 10), done=done(0))["granted"])
    assert sum(got) == 5 and c.keys[0].in_flight == 5
    c.poll(0, ZERO, asks(500, 4, 10), done=done(got[0]))  # task 0's requests all answered
    assert c.keys[0].in_flight == 5 - got[0] + min(got[0], 4)


def test_a_task_that_ends_frees_the_slots_of_requests_it_never_reported():
    c, clock = coordinator(concurrency=2, workers=2)
    c.register(0)
    c.poll(0, ZERO, asks(0, 1, 10))
    clock.t += 1
    c.poll(0, ZERO, asks(1, 1, 10))
    assert c.keys[0].in_flight == 2
    c.unregister(0, ZERO)  # its worker stopped short of reporting
    assert c.keys[0].in_flight == 0


def test_the_tail_of_a_pool_run_one_shard_left_gets_every_key():
    c, clock = coordinator(workers=2, keys=2)
    assert c.register(0, keys=2)["key"] == 0
    got = {0: 0.0, 1: 0.0}
    for step in range(10):
        clock.t += 0.1
        for _, t, key in c.poll(0, ZERO, asks(step * 10, 6, 2_000), done=done(100 * step, 100 * step))["granted"]:
            got[key] += t
    assert got[0] == pytest.approx(10_000, rel=0.25) and got[1] == pytest.approx(10_000, rel=0.25)
    assert c.totals()["keys"]["key1"]["tokens"] == 0  # until the task reports what its requests there cost
    c.poll(0, ZERO, by_key={0: {"tokens": 9_000, "requests": 5, "http_429": 0},
                            1: {"tokens": 8_000, "requests": 4, "http_429": 1}})
    t = c.totals()
    assert (t["keys"]["key1"]["tokens"], t["keys"]["key1"]["http_429"], t["tokens"]) == (8_000, 1, 17_000)


def test_a_429_pauses_the_whole_key_and_only_recurring_ones_slow_it_down():
    c, clock = coordinator()
    c.register(0)
    c.register(1)
    c.poll(0, ZERO, asks(0, 1, 1))
    clock.t += 1.0
    r = c.poll(0, ZERO, asks(1, 1, 1), refused=[(500.0, 0)], retry_after=2.0)
    assert r["pause"] == {0: pytest.approx(2.0)} and r["granted"] == []
    assert c.poll(1, ZERO, asks(0, 1, 1e3))["pause"] == {0: pytest.approx(2.0)}  # the other task too
    kb = c.keys[0]
    assert kb.factor == 1.0  # one refusal: the limits are right, the moment was not
    clock.t += 3.0
    c.poll(1, ZERO, asks(0, 1, 1e3), refused=[(1000.0, 0)], retry_after=1.0)
    assert kb.factor == pytest.approx(0.85) and kb.tokens.rate == pytest.approx(10_000 * 0.85)


def test_a_retried_attempt_starts_its_rows_over_but_its_predecessors_spend_is_kept():
    c, _ = coordinator()
    c.register(7)
    c.poll(7, {"rows": 300, "tokens": 5000, "requests": 3, "http_429": 1, "retries": 0})
    c.register(7)  # the worker died; Ray retries the shard
    t = c.totals()
    assert (t["rows"], t["tokens"], t["requests"], t["http_429"]) == (0, 5000, 3, 1)


def test_tasks_spread_over_a_pool_of_keys_fewest_running_first_each_key_its_own_budget():
    c, clock = coordinator(workers=4, keys=2)
    assert [c.register(s, keys=2)["key"] for s in range(4)] == [0, 1, 0, 1]
    c.unregister(1, dict(ZERO, tokens=10))
    assert c.register(9, keys=2)["key"] == 1  # key 1 had one task running, key 0 two
    for s in (0, 9):
        c.poll(s, ZERO, asks(0, 1, 1))
    got = {0: 0.0, 1: 0.0}
    for step in range(10):
        clock.t += 0.1
        for s in (0, 9):
            reply = c.poll(s, ZERO, asks(10 + 10 * step, 4, 2_000), done=done(100 * step, 100 * step))
            for _, t, key in reply["granted"]:
                got[key] += t
    assert got[0] == pytest.approx(10_000, rel=0.06) and got[1] == pytest.approx(10_000, rel=0.06)  # each its TPM


def test_totals_add_up_over_keys_and_name_keys_by_index_only():
    c, _ = coordinator(keys=2)
    c.register(0, keys=2)
    c.register(1, keys=2)
    c.poll(0, {"rows": 5, "tokens": 100, "requests": 2, "http_429": 0, "retries": 1})
    c.unregister(1, {"rows": 7, "tokens": 200, "requests": 3, "http_429": 1, "retries": 0})
    t = c.totals()
    assert set(t["keys"]) == {"key0", "key1"}
    for k in ("rows", "tokens", "requests", "http_429", "retries"):
        assert t[k] == t["keys"]["key0"][k] + t["keys"]["key1"][k]
    assert (t["tokens"], t["keys"]["key1"]["http_429"]) == (300, 1)


def test_key_budget_recovers_after_a_cut():
    clock = Clock()
    kb = KeyBudget(600, 600_000, 4, 1.0, clock=clock)
    kb.rate_limited(1.0)
    clock.t += 2.0
    kb.rate_limited(1.0)  # recurring: cut
    assert kb.factor < 1.0
    clock.t += 1.0 + 10.0  # pause, then 10 quiet seconds at +2% a second
    kb.update()
    assert kb.factor == pytest.approx(1.0)


def test_request_size_follows_the_limits():
    small = parse_config({"limits": {"rpm": 500, "tpm": 1_000_000, "concurrency": 5}, "ray": {"workers": 2}})
    assert request_token_budget(small) == 8000  # 4 × TPM/RPM: RPM never binds before TPM
    tight = parse_config({"limits": {"rpm": 6000, "tpm": 60_000, "concurrency": 5}, "ray": {"workers": 2}})
    assert request_token_budget(tight) == 512  # never below 512 tokens a request



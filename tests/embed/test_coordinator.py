"""The coordinator splits the key's budget among running shards and hands the freed share to the last ones."""
import pytest

from jinabatch.embed.coordinator import Coordinator
from jinabatch.embed.task import request_token_budget
from jinabatch.config import parse_config


def test_before_the_driver_speaks_a_worker_gets_only_its_share_not_the_whole_key():
    c = Coordinator(rpm=600, tpm=600_000, concurrency=4, workers=4, target=1.0)
    s = c.register(0)
    assert s.tpm == pytest.approx(150_000) and s.concurrency == 1


def test_when_fewer_shards_than_workers_remain_the_running_ones_take_the_freed_share():
    c = Coordinator(rpm=600, tpm=600_000, concurrency=5, workers=4, target=1.0)
    c.set_remaining(10)
    shares = [c.register(i) for i in range(4)]
    assert sum(s.tpm for s in shares) == pytest.approx(600_000)
    assert sum(c.share(i).concurrency for i in range(4)) == 5
    for i in (0, 1):  # two shards finish; only the two running ones remain
        c.unregister(i, {"rows": 1, "tokens": 1, "requests": 1, "http_429": 0, "retries": 0})
    c.set_remaining(2)
    assert [c.share(i).tpm for i in (2, 3)] == [pytest.approx(300_000)] * 2
    assert sorted(c.share(i).concurrency for i in (2, 3)) == [2, 3]
    c.unregister(2, {"rows": 1, "tokens": 1, "requests": 1, "http_429": 0, "retries": 0})
    c.set_remaining(1)
    last = c.share(3)
    assert (last.rpm, last.tpm, last.concurrency) == (pytest.approx(600), pytest.approx(600_000), 5)


def test_a_retried_attempt_starts_its_rows_over_but_its_predecessors_spend_is_kept():
    c = Coordinator(rpm=600, tpm=600_000, concurrency=2, workers=2, target=1.0)
    c.register(7)
    c.report(7, {"rows": 300, "tokens": 5000, "requests": 3, "http_429": 1, "retries": 0})
    c.register(7)  # the worker died; Ray retries the shard
    t = c.totals()
    assert (t["rows"], t["tokens"], t["requests"], t["http_429"]) == (0, 5000, 3, 1)


def test_a_new_worker_inherits_the_unused_budget_a_finished_one_left_not_a_full_bucket():
    c = Coordinator(rpm=600, tpm=600_000, concurrency=2, workers=2, target=1.0)
    assert c.take_levels() == (0.0, 0.0)  # the first workers start empty: no burst above the rate
    c.unregister(0, {"rows": 0, "tokens": 0, "requests": 0, "http_429": 0, "retries": 0}, (1.0, 2000.0))
    req, tok = c.take_levels()
    assert 1.0 <= req < 2.0 and 2000.0 <= tok < 4000.0


def test_request_size_follows_the_limits():
    small = parse_config({"limits": {"rpm": 500, "tpm": 1_000_000, "concurrency": 5}, "ray": {"workers": 2}})
    assert request_token_budget(small) == 8000  # 4 × TPM/RPM: RPM never binds before TPM
    tight = parse_config({"limits": {"rpm": 6000, "tpm": 60_000, "concurrency": 5}, "ray": {"workers": 2}})
    assert request_token_budget(tight) == 512  # never below 512 tokens a request

"""Token estimate, calibration and request packing (pure functions, no server)."""
import pytest

from jinabatch.local_api import fakemodel
from jinabatch.jina.tokens import TokenEstimator, plan_batches, raw_estimate


def test_raw_estimate_counts_utf8_bytes_plus_special_tokens():
    assert raw_estimate("") == 2
    assert raw_estimate("abcd" * 10) == 12
    assert raw_estimate("é") == 2 + 2 / 4  # 2 bytes in UTF-8


def test_estimator_starts_pessimistic():
    est = TokenEstimator()
    texts = ["hello world"] * 10
    assert est.estimate(texts) > est.raw(texts)


def test_calibration_converges_to_the_servers_count():
    """After a few observed requests the ratio predicts fakemodel's token count within 3%."""
    corpus = [f"Document {i}: the quick brown fox number {i * 37} jumps over lazy dogs, again and again."
              for i in range(400)]
    est = TokenEstimator()
    for k in range(0, 300, 30):
        batch = corpus[k:k + 30]
        est.observe(est.raw(batch), sum(fakemodel.count_tokens(t) for t in batch))
    held_out = corpus[300:]
    truth = sum(fakemodel.count_tokens(t) for t in held_out)
    assert est.estimate(held_out) == pytest.approx(truth, rel=0.03)


def test_observe_ignores_empty_usage_and_clamps_outliers():
    est = TokenEstimator(max_ratio=4.0)
    before = est.ratio
    est.observe(100.0, 0)
    assert est.ratio == before
    est.observe(10.0, 10_000)
    assert est.ratio <= 4.0


def test_plan_respects_the_input_cap():
    groups = plan_batches(["a"] * 10, max_inputs=4, max_tokens=10**6)
    assert [len(g) for g in groups] == [4, 4, 2]
    assert [i for g in groups for i in g] == list(range(10))


def test_plan_respects_the_token_budget():
    texts = ["x" * 40] * 9  # 12 raw tokens each
    groups = plan_batches(texts, max_inputs=100, max_tokens=36, estimate=raw_estimate)
    assert [len(g) for g in groups] == [3, 3, 3]


def test_plan_puts_a_text_over_the_budget_alone():
    texts = ["short", "y" * 4000, "short", "short"]
    groups = plan_batches(texts, max_inputs=100, max_tokens=100, estimate=raw_estimate)
    assert groups == [[0], [1], [2, 3]]


def test_plan_of_nothing_is_empty_and_bad_caps_fail():
    assert plan_batches([], max_inputs=5, max_tokens=5) == []
    with pytest.raises(ValueError, match="max_inputs"):
        plan_batches(["a"], max_inputs=0, max_tokens=5)


def test_an_input_sent_with_truncate_is_estimated_at_most_the_models_cap():
    est = TokenEstimator(initial_ratio=1.0)
    huge = "word " * 40_000  # ~50,000 tokens by bytes / 4
    assert est.estimate_one(huge) > 40_000 and est.estimate_one(huge, cap=8192) == 8192
    assert est.estimate(["tiny", huge], cap=8192) == est.estimate_one("tiny") + 8192


def test_next_batch_takes_the_longest_run_within_both_caps_and_at_least_one_text():
    texts = ["a"] * 3 + ["x" * 400] + ["b"] * 5  # raw estimates 2.25 ... 102 ...
    est = lambda t: raw_estimate(t)  # noqa: E731
    from jinabatch.jina.tokens import next_batch
    assert next_batch(texts, 0, max_inputs=100, max_tokens=50, estimate=est) == 3  # the big one would overflow
    assert next_batch(texts, 3, max_inputs=100, max_tokens=50, estimate=est) == 4  # alone, though over budget
    assert next_batch(texts, 4, max_inputs=2, max_tokens=1e9, estimate=est) == 6  # the input cap
    assert next_batch(texts, 9, max_inputs=2, max_tokens=1e9, estimate=est) == 9  # nothing left
    assert plan_batches(texts, max_inputs=100, max_tokens=50, estimate=est) == [[0, 1, 2], [3], [4, 5, 6, 7, 8]]

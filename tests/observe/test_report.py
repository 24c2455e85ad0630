"""The embed report: counts that reconcile, utilization against the binding limit, the JSON file."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from jinabatch.observe.report import EmbedReport, utilization
from jinabatch.storage import Storage


@pytest.mark.parametrize("tokens, requests, seconds, expect", [
    (60_000, 10, 60, (0.6, "tpm")),        # 60k of 100k TPM, 10 of 500 RPM
    (10_000, 450, 60, (0.9, "rpm")),       # many small requests: RPM binds
    (100_000, 250, 30, (2.0, "tpm")),      # 200k tokens/min over a 100k budget
    (5, 5, 0, (0.0, "tpm")),               # no window: nothing to divide by
])
def test_utilization_is_the_share_of_the_binding_limit(tokens, requests, seconds, expect):
    """max(tokens/min ÷ TPM, requests/min ÷ RPM), and which of the two it is."""
    u, which = utilization(tokens, requests, seconds, tpm=100_000, rpm=500)
    assert (round(u, 6), which) == expect


def test_rows_and_reasons_add_up_across_shards():
    """add_rows sums rows and merges reason counts; reconciled holds iff in = embedded + dead."""
    r = EmbedReport()
    r.add_rows(100, 97, 3, {"null text": 2, "too long": 1})
    r.add_rows(50, 49, 1, {"null text": 1}, truncated=4)
    assert (r.rows_in, r.rows_embedded, r.rows_dead_letter, r.rows_truncated) == (150, 146, 4, 4)
    assert r.dead_letter_reasons == {"null text": 3, "too long": 1} and r.reconciled
    r.rows_embedded -= 1
    assert not r.reconciled


def test_finish_rates_and_written_report(tmp_path):
    """Rates per minute over the embed window, utilization rounded, written as _report.json."""
    r = EmbedReport(tokens=30_000, requests=60)
    r.finish_rates(30.0, tpm=100_000, rpm=500)
    assert (r.tokens_per_min, r.requests_per_min, r.utilization, r.binding_limit) == (60_000.0, 120.0, 0.6, "tpm")
    data = json.loads(Path(r.write(Storage.open(tmp_path))).read_text())
    assert data["tokens_per_min"] == 60_000.0 and data["embed_window_s"] == 30.0
    assert "60000 tokens/min = 60.0% of TPM" in r.summary()


def test_a_batch_runs_summary_gives_its_rate_without_a_share_of_tpm_it_never_spent():
    """The batch endpoint bills tokens but does not spend the key's TPM: no "% of TPM" (it read 101.1% once)."""
    from jinabatch.observe.records import BatchCounts

    r = EmbedReport(tokens=30_000, requests=4, batches=BatchCounts(submitted=2, completed=2, billed_tokens=30_000))
    r.finish_rates(30.0, tpm=10_000, rpm=500)
    line = r.summary()
    assert "60000 tokens/min through batches (not against the key's TPM)" in line and "% of TPM" not in line
    r.batches = None
    assert "60000 tokens/min = 600.0% of TPM" in r.summary()

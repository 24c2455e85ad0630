"""The driver's progress output: a bar on a terminal, plain lines (never a carriage return) elsewhere."""
from __future__ import annotations

import io

import pytest

from jinabatch.observe.progress import BarProgress, LineProgress, Progress, format_duration, make_progress

LIMITS = {"rpm": 600, "tpm": 600_000}


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    t = 100.0

    def __call__(self):
        return self.t


def test_without_a_terminal_a_line_every_n_seconds_and_no_carriage_return():
    stream, clock = io.StringIO(), Clock()
    p = LineProgress(2000, limits=LIMITS, every=30, stream=stream, clock=clock)
    for step in range(1, 121):  # 60 s of 0.5 s ticks: 300 tokens and 1 row per tick
        clock.t += 0.5
        p.update({"rows": step * 10, "tokens": step * 5000, "requests": step, "http_429": step // 60, "retries": 0},
                 shards_done=step // 40, shards_total=5)
    p.close()
    text = stream.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and len(lines) == 3  # at 30 s, at 60 s, and the closing line
    # 5,000 tokens per 0.5 s = 600,000 tokens/min = 100% of TPM; 20 rows/s leaves 800 rows = 40 s
    assert lines[1].startswith("embed: 1,200/2,000 rows (60.0%), 3/5 shards, 600,000 tokens/min = 100.0% of TPM 600,000")
    assert "120 req/min (RPM 600)" in lines[1] and "2 429s" in lines[1] and lines[1].endswith("ETA 40s")
    assert lines[2].endswith("took 1m00s")


def test_lines_count_rows_done_by_an_earlier_run():
    stream, clock = io.StringIO(), Clock()
    p = LineProgress(1000, limits=LIMITS, every=1, stream=stream, clock=clock, rows_before=600)
    clock.t += 2
    p.update({"rows": 200, "tokens": 0, "requests": 0})
    assert "800/1,000 rows (80.0%)" in stream.getvalue() and "ETA 2s" in stream.getvalue()


@pytest.mark.parametrize("progress, stream, kind", [
    (True, io.StringIO(), LineProgress), ("auto", io.StringIO(), LineProgress), (True, Tty(), BarProgress),
    ("lines", Tty(), LineProgress), ("bar", io.StringIO(), BarProgress), (False, Tty(), Progress),
], ids=["pipe", "auto-pipe", "terminal", "forced-lines", "forced-bar", "off"])
def test_progress_picks_a_bar_only_for_a_terminal(progress, stream, kind):
    p = make_progress(progress, 100, limits=LIMITS, stream=stream)
    assert type(p) is kind
    p.update({"rows": 5, "tokens": 10, "requests": 1})
    p.close()
    if kind is Progress:
        assert stream.getvalue() == ""


def test_the_line_interval_can_be_set_from_the_environment(monkeypatch):
    monkeypatch.setenv("JINABATCH_PROGRESS_SECONDS", "7")
    assert make_progress(True, 1, limits=LIMITS, stream=io.StringIO()).every == 7


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (59.4, "59s"), (61, "1m01s"), (3 * 3600 + 125, "3h02m"),
                                           (None, "?"), (float("inf"), "?")])
def test_durations_read_like_a_clock(seconds, text):
    assert format_duration(seconds) == text

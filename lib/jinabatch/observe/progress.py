"""The driver's progress output: a tqdm bar on a terminal, a plain line every ``every`` seconds elsewhere.

``ray job logs``, CI logs and files keep every byte a bar writes, so with no terminal the driver prints
lines instead — never a carriage return::

    embed: 1,200/2,000 rows (60.0%), 3/5 shards, 152,310 tokens/min = 95.2% of TPM 160,000, 310 req/min (RPM 500),
    0 429s, 0 retries, ETA 2m10s

``make_progress(progress, ...)`` picks: ``True``/``"auto"`` → bar if the stream is a terminal, else lines;
``"bar"`` / ``"lines"`` force one; ``False`` → nothing. ``JINABATCH_PROGRESS_SECONDS`` overrides the
line interval (default 30 s). The driver calls ``update(totals, ...)`` with the
coordinator's cumulative counters (the ``Counters`` ``RunLog.tick`` gets) and ``close()`` at the end.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from typing import Any, Callable, TextIO

from .records import Counters, Limits

__all__ = ["make_progress", "Progress", "LineProgress", "BarProgress", "format_duration"]


def format_duration(seconds: float | None) -> str:
    """``3h02m``, ``1m01s``, ``59s``; ``?`` for None, NaN or infinity."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    s = int(round(max(0.0, seconds)))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:
    """Nothing shown (``progress=False``): the interface the driver calls."""

    def update(self, totals: Counters | Mapping[str, int], *, shards_done: int = 0, shards_total: int = 0,
               workers_active: int = 0) -> None:
        """The run's cumulative counters so far (a dict of them is taken too) and its shards."""

    def close(self) -> None:
        pass


class LineProgress(Progress):
    """A complete line every ``every`` seconds (and one at close): rows, shards, rates against the limits,
    429s, ETA from the rows rate since the previous line."""

    def __init__(self, total_rows: int, *, limits: Limits | Mapping[str, Any], every: float = 30.0,
                 stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic, desc: str = "embed",
                 rows_before: int = 0):
        self.total, self.limits, self.every, self.desc = total_rows, Limits.of(limits), every, desc
        self.stream = stream or sys.stderr
        self.clock = clock
        self.rows_before = rows_before  # rows already done by an earlier run (resume): counted, not in rates
        self._start = clock()
        self._prev: tuple[float, Counters] = (self._start, Counters())
        self._last_line = self._start
        self._state: tuple[Counters | None, int, int] = (None, 0, 0)
        self.lines = 0

    def update(self, totals: Counters | Mapping[str, int], *, shards_done: int = 0, shards_total: int = 0,
               workers_active: int = 0) -> None:
        self._state = (Counters.of(totals), shards_done, shards_total)
        if self.clock() - self._last_line >= self.every:
            self._emit()

    def close(self) -> None:
        if self._state[0] is not None:
            self._emit(final=True)

    def line(self, final: bool = False) -> str:
        """The line for now: since the previous line, or (``final``) over the whole run."""
        totals, done, total_shards = self._state
        totals = totals or Counters()
        now = self.clock()
        t0, prev = (self._start, Counters()) if final else self._prev
        dt = max(1e-9, now - t0)
        rows = self.rows_before + totals.rows
        tpm = (totals.tokens - prev.tokens) / dt * 60
        rpm = (totals.requests - prev.requests) / dt * 60
        rows_s = (totals.rows - prev.rows) / dt
        lim_tpm, lim_rpm = self.limits.tpm, self.limits.rpm
        pct = f" ({rows / self.total:.1%})" if self.total else ""
        use = f" = {tpm / lim_tpm:.1%} of TPM {lim_tpm:,}" if lim_tpm else ""
        parts = [f"{self.desc}: {rows:,}/{self.total:,} rows{pct}", f"{done}/{total_shards} shards",
                 f"{tpm:,.0f} tokens/min{use}", f"{rpm:,.0f} req/min" + (f" (RPM {lim_rpm:,})" if lim_rpm else ""),
                 f"{totals.http_429:,} 429s", f"{totals.retries:,} retries"]
        if final:
            parts.append(f"took {format_duration(now - self._start)}")
        else:
            left = max(0, self.total - rows)
            parts.append(f"ETA {format_duration(left / rows_s) if rows_s > 0 else '?'}" if left else "ETA 0s")
        return ", ".join(parts)

    def _emit(self, final: bool = False) -> None:
        text = self.line(final)
        self.stream.write(text + "\n")
        self.stream.flush()
        self.lines += 1
        now = self.clock()
        self._prev, self._last_line = (now, self._state[0] or Counters()), now


class BarProgress(Progress):
    """tqdm on a terminal: rows, with tokens/min, requests and 429s as its postfix."""

    def __init__(self, total_rows: int, *, limits: Limits | Mapping[str, Any], stream: TextIO | None = None,
                 desc: str = "embed", rows_before: int = 0):
        from tqdm import tqdm

        self.rows_before = rows_before
        self.bar = tqdm(total=total_rows, initial=rows_before, unit="rows", smoothing=0.1, dynamic_ncols=True,
                        desc=desc, file=stream)
        self.limits = Limits.of(limits)
        self._start = time.monotonic()

    def update(self, totals: Counters | Mapping[str, int], *, shards_done: int = 0, shards_total: int = 0,
               workers_active: int = 0) -> None:
        totals = Counters.of(totals)
        self.bar.n = self.rows_before + totals.rows
        el = max(1e-9, time.monotonic() - self._start)
        self.bar.set_postfix(tok_min=f"{totals.tokens / el * 60:,.0f}", req=totals.requests, r429=totals.http_429,
                             shards=f"{shards_done}/{shards_total}", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def make_progress(progress: bool | str, total_rows: int, *, limits: Limits | Mapping[str, Any],
                  stream: TextIO | None = None, every: float = 30.0, desc: str = "embed",
                  rows_before: int = 0) -> Progress:
    """The progress output for ``progress`` (see the module docstring)."""
    if progress is False or progress is None or progress == "off":
        return Progress()
    stream = stream or sys.stderr
    mode = progress if isinstance(progress, str) else "auto"
    if mode == "auto":
        isatty = getattr(stream, "isatty", None)
        mode = "bar" if isatty is not None and isatty() else "lines"
    if mode == "bar":
        return BarProgress(total_rows, limits=limits, stream=stream, desc=desc, rows_before=rows_before)
    if mode == "lines":
        every = float(os.environ.get("JINABATCH_PROGRESS_SECONDS", every))
        return LineProgress(total_rows, limits=limits, stream=stream, every=every, desc=desc, rows_before=rows_before)
    raise ValueError(f"progress: {progress!r} is not one of True, False, 'auto', 'bar', 'lines'")

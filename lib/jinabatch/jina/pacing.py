"""``AdaptiveLimiter``: the pace of a client nobody gave limits to, learnt from the server's answers.

``JinaClient`` and ``JinaEmbeddingFunction`` use it unless ``rpm`` / ``tpm`` (a ``WorkerLimiter`` at those
rates) or a ``limiter`` is given. It starts unpaced, with requests of ``start_request_tokens``, and learns:

* **A 429 pauses the whole client** — every request not yet sent, not only the refused one — for the
  server's ``Retry-After``, or without one for 0.5 s doubling with each 429 in a row (at most 30 s).
* **Rates, AIMD.** A 429 for a request sent at the current pace (not one sent before the last cut) cuts
  the pace to ``decrease`` × what the server let through — tokens and requests sent and not refused —
  between the previous such 429 and this one, over that time: two moments the server's bucket was empty,
  so what it took in between is its rate; that estimate becomes the *ceiling*. (The first 429 has no
  earlier one: its estimate from everything since the start includes the burst the server's full bucket
  allowed, so it overshoots, and the next 429 corrects it.) Each quiet second adds ``increase_per_s`` of
  the ceiling back, up to ``plateau`` × the ceiling, and above that only a tenth as fast (probing whether
  the limit grew).
* **Which limit** — the 429's message, when it names one (``RateLimited.limit``): tokens → TPM pace,
  requests → RPM pace, concurrent requests → the concurrency cap drops to one less than was in flight
  (and grows back by one per ``concurrency_recovery_s`` quiet seconds). Unnamed → both paces.
* **Request size** follows the pace: about ``request_seconds`` of the token pace, enough tokens per
  request that the request pace does not bind first, never above ``max_request_tokens``. ``JinaClient.embed``
  cuts its requests to it as it goes, and splits a request a 429 refused when it is bigger than that.

The admission mechanics (arrival order, buckets, concurrency, pause) are ``WorkerLimiter``'s; this class
only moves its rates.
"""
from __future__ import annotations

import time
from collections import defaultdict, deque

from .limits import UNLIMITED, Share, WorkerLimiter

__all__ = ["AdaptiveLimiter"]


class AdaptiveLimiter(WorkerLimiter):
    """A ``WorkerLimiter`` whose rates, request size and concurrency are learnt from usage and 429s."""

    def __init__(self, *, concurrency: int = 4, max_request_tokens: int = 60_000, start_request_tokens: int = 8192,
                 decrease: float = 0.85, increase_per_s: float = 0.02, plateau: float = 0.95,
                 request_seconds: float = 0.5, min_request_tokens: int = 256, concurrency_recovery_s: float = 20.0,
                 clock=time.monotonic):
        super().__init__(Share(UNLIMITED, UNLIMITED, concurrency), burst_seconds=1.0, clock=clock)
        self.max_concurrency = concurrency
        self.max_request_tokens = max_request_tokens
        self.start_request_tokens = min(start_request_tokens, max_request_tokens)
        self.decrease, self.increase_per_s, self.plateau = decrease, increase_per_s, plateau
        self.request_seconds, self.min_request_tokens = request_seconds, min_request_tokens
        self.concurrency_recovery_s = concurrency_recovery_s
        self.tpm: float | None = None  # learnt paces (per minute); None: not limited yet
        self.rpm: float | None = None
        self.ceiling: dict[str, float] = {}  # "tpm"/"rpm" -> what the server was seen to let through
        self._flying: dict[int, deque[float]] = defaultdict(deque)  # tokens -> send times of requests in flight
        self._through: deque[tuple[float, int]] = deque()  # (send time, tokens) of requests the server took
        self._first_at: float | None = None
        self._cut_at: float | None = None  # send time of the 429 behind the last cut
        self._quiet_since = self._factor_t = clock()
        self._conc_cut_at = -1e9
        self._streak = 0  # 429s in a row

    # -- what JinaClient.embed asks ---------------------------------------------------------------
    def request_tokens(self) -> int:
        if self.tpm is None:
            size = float(self.start_request_tokens)
        else:
            size = self.tpm / 60 * self.request_seconds
            if self.rpm:  # enough tokens a request that the request pace stays below 80% of its limit
                size = max(size, 1.25 * self.tpm / self.rpm)
        return int(min(self.max_request_tokens, max(self.min_request_tokens, size)))

    # -- the Limiter protocol ------------------------------------------------------------------
    async def acquire(self, tokens: int) -> None:
        if self._first_at is None:
            self._first_at = self._clock()
        await super().acquire(tokens)
        self._flying[tokens].append(self._clock())

    def release(self, tokens_estimated: int, tokens_used: int | None, *, rate_limited: bool = False,
                retry_after: float | None = None, limit: str | None = None, permit: object | None = None) -> None:
        now = self._clock()
        in_flight = self.in_flight
        sent = self._flying[tokens_estimated].popleft() if self._flying.get(tokens_estimated) else now
        if rate_limited:
            self._streak += 1
            self.rate_limited += 1
            self.last_retry_after = retry_after
            self._quiet_since = now
            self.pause(retry_after if retry_after is not None else min(30.0, 0.5 * 2 ** (self._streak - 1)))
            if limit == "concurrency":
                self._cut_concurrency(in_flight, now)
            elif self._cut_at is None or sent >= self._cut_at:  # sent at the current pace: a new signal
                self._cut(sent, limit)
        else:  # answered, or failed after the server took it: it went through
            if tokens_used is not None:
                self._streak = 0
            self._through.append((sent, tokens_used if tokens_used is not None else tokens_estimated))
        while self._through and self._through[0][0] < now - 300:
            self._through.popleft()
        super().release(tokens_estimated, tokens_used)  # slot + settling; the rates are ours to move

    # -- learning ------------------------------------------------------------------------------
    def _cut(self, sent: float, limit: str | None) -> None:
        """Slow down to ``decrease`` × what the server let through since the last 429 (or × the pace)."""
        first = self._cut_at is None
        since = self._first_at if first else self._cut_at
        window = max(1.0, sent - since)
        took = [t for ts, t in self._through if since <= ts < sent]
        took += [t for t, times in self._flying.items() for ts in times if since <= ts < sent]  # still out
        est = {"tpm": sum(took) / window * 60, "rpm": len(took) / window * 60}
        for which in ("tpm", "rpm"):
            if limit not in (None, which):
                continue
            pace = getattr(self, which)
            if not first and est[which] > 0:
                self.ceiling[which] = est[which]  # between two 429s the server's bucket went from empty to empty
            base = min(x for x in (pace, est[which] or None) if x is not None) if (pace or est[which]) else None
            if base:
                setattr(self, which, max(self.decrease * base, 1.0 if which == "rpm" else 100.0))
        self._cut_at = sent
        self._apply()
        self._requests.at_most(0.0)  # the server's buckets are empty now
        self._tokens.at_most(0.0)

    def _cut_concurrency(self, in_flight: int, now: float) -> None:
        cap = max(1, min(self.share.concurrency, in_flight - 1))
        self._conc_cut_at = now
        self.share = Share(self.share.rpm, self.share.tpm, cap)

    def _recover(self) -> None:
        now = self._clock()
        dt = now - self._factor_t
        self._factor_t = now
        if now < self._paused_until or dt <= 0:
            return
        changed = False
        for which in ("tpm", "rpm"):
            pace = getattr(self, which)
            if pace is None:
                continue
            ceiling = self.ceiling.get(which)
            if ceiling is None:
                step = self.increase_per_s * pace * dt
            else:
                step = self.increase_per_s * ceiling * dt
                if pace >= self.plateau * ceiling:
                    step /= 10  # near the last limit seen: probe slowly
            setattr(self, which, pace + step)
            changed = True
        if (self.share.concurrency < self.max_concurrency
                and now - max(self._conc_cut_at, self._quiet_since) >= self.concurrency_recovery_s):
            self._conc_cut_at = now
            self.share = Share(self.share.rpm, self.share.tpm, self.share.concurrency + 1)
        if changed:
            self._apply()

    def _apply(self) -> None:
        rpm = self.rpm if self.rpm is not None else UNLIMITED
        tpm = self.tpm if self.tpm is not None else UNLIMITED
        self.share = Share(rpm, tpm, self.share.concurrency)
        r_rate, t_rate = rpm / 60, tpm / 60
        # a second of the pace, and never less than one request: smooth, and a big request still fits
        self._requests.set_rate(r_rate, max(1.0, r_rate * self.burst_seconds))
        self._tokens.set_rate(t_rate, max(float(self.request_tokens()), t_rate * self.burst_seconds))

    def __repr__(self) -> str:
        tpm = f"{self.tpm:.0f}" if self.tpm is not None else "unlearnt"
        rpm = f"{self.rpm:.1f}" if self.rpm is not None else "unlearnt"
        return (f"AdaptiveLimiter(tpm={tpm}, rpm={rpm}, concurrency={self.share.concurrency}, "
                f"request_tokens={self.request_tokens()}, in_flight={self.in_flight})")

"""Token estimates and request packing.

The API counts tokens with the model's tokenizer, which we don't ship. Instead a cheap estimate —
UTF-8 bytes / 4 plus a couple of special tokens per input — is multiplied by a *ratio* learned from
the server: every response carries ``usage.total_tokens``, and :meth:`TokenEstimator.observe`
folds ``used / raw_estimate`` into exponentially decayed sums (big requests weigh more than small
ones, old ones fade). The ratio starts pessimistic (1.15) so the first requests don't overshoot a
TPM budget, and is clamped so one odd response can't wreck it.

**Truncated inputs.** Sent with ``truncate``, an input is billed at most the model's token cap however
long it is, so its estimate is capped there (``cap=``): a 120,000-character row is ~8,192 tokens, not
~35,000. A request holding a capped input says nothing about the ratio (the server billed the cap, not
the text), so the client does not calibrate from it — one such row used to drag the ratio toward 0.2
and have the next requests under-estimated threefold.

:func:`next_batch` is the one greedy packer: from a start index, the longest run of consecutive texts
within an input cap and a token budget (a text over the budget goes alone — the server decides whether
it is too long; that is the embed stage's business, not the packer's). :func:`plan_batches` applies it
to a whole list; ``JinaClient.embed`` applies it request by request as the budget changes.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

__all__ = ["TokenEstimator", "raw_estimate", "next_batch", "plan_batches", "BYTES_PER_TOKEN", "SPECIAL_TOKENS"]

BYTES_PER_TOKEN = 4.0  # a typical subword tokenizer on English-like text
SPECIAL_TOKENS = 2  # <s> ... </s> per input


def raw_estimate(text: str) -> float:
    """The uncalibrated token estimate of one text: UTF-8 bytes / 4, plus the special tokens."""
    return len(text.encode("utf-8", "surrogatepass")) / BYTES_PER_TOKEN + SPECIAL_TOKENS


class TokenEstimator:
    """Estimate tokens as ``raw_estimate × ratio``, the ratio calibrated from the server's usage.

    Thread-safe (Ray tasks may share one per process). ``ratio`` is
    ``Σ decay^k·used_k / Σ decay^k·raw_k`` over observed requests, seeded with a prior of
    ``prior_weight`` raw tokens at ``initial_ratio`` that fades the same way.
    """

    def __init__(self, *, initial_ratio: float = 1.15, decay: float = 0.8, prior_weight: float = 200.0,
                 min_ratio: float = 0.2, max_ratio: float = 10.0):
        if not (0 < decay < 1):
            raise ValueError("decay must be in (0, 1)")
        self._decay = decay
        self._min, self._max = min_ratio, max_ratio
        self._raw = prior_weight
        self._used = prior_weight * initial_ratio
        self._observations = 0
        self._lock = threading.Lock()

    @property
    def ratio(self) -> float:
        with self._lock:
            return min(self._max, max(self._min, self._used / self._raw))

    @property
    def observations(self) -> int:
        return self._observations

    def raw(self, texts: Sequence[str]) -> float:
        return sum(raw_estimate(t) for t in texts)

    def estimate_one(self, text: str, cap: int | None = None) -> int:
        """Calibrated estimate of one input; at most ``cap`` (the model's cap, for an input sent with truncate)."""
        est = max(1, round(raw_estimate(text) * self.ratio))
        return min(est, cap) if cap else est

    def estimate(self, texts: Sequence[str], cap: int | None = None) -> int:
        """Calibrated token estimate of one request holding ``texts`` (at least 1), each input at most ``cap``."""
        if cap:
            ratio = self.ratio
            return max(1, round(sum(min(raw_estimate(t) * ratio, cap) for t in texts)))
        return max(1, round(self.raw(texts) * self.ratio))

    def observe(self, raw: float, used: int) -> None:
        """Fold in one response: ``raw`` = :meth:`raw` of its texts, ``used`` = ``usage.total_tokens``."""
        if raw <= 0 or used <= 0:
            return
        observed = min(self._max, max(self._min, used / raw))
        with self._lock:
            self._raw = self._raw * self._decay + raw
            self._used = self._used * self._decay + raw * observed
            self._observations += 1

    def __repr__(self) -> str:
        return f"TokenEstimator(ratio={self.ratio:.3f}, observations={self._observations})"


def next_batch(texts: Sequence[str], start: int, *, max_inputs: int, max_tokens: float,
               estimate: Callable[[str], float]) -> int:
    """The end (exclusive) of the request that starts at ``texts[start]``: as many consecutive texts as fit
    ``max_inputs`` and ``max_tokens`` estimated tokens (``estimate(text)``); at least one."""
    stop, tokens = start, 0.0
    while stop < len(texts) and stop - start < max_inputs:
        t = estimate(texts[stop])
        if stop > start and tokens + t > max_tokens:
            break
        tokens += t
        stop += 1
    return max(stop, min(start + 1, len(texts)))


def plan_batches(texts: Sequence[str], *, max_inputs: int, max_tokens: int,
                 estimate: Callable[[str], float] | None = None) -> list[list[int]]:
    """Cut ``texts`` into consecutive groups of indices, each one request (:func:`next_batch` in a loop).

    A group holds at most ``max_inputs`` texts and at most ``max_tokens`` estimated tokens
    (``estimate(text)``, by default the pessimistic uncalibrated one × 1.15). A text whose own
    estimate exceeds ``max_tokens`` forms a group alone. Every index appears exactly once, in order.
    """
    if max_inputs < 1 or max_tokens < 1:
        raise ValueError(f"max_inputs and max_tokens must be >= 1 (got {max_inputs}, {max_tokens})")
    est = estimate or (lambda t: raw_estimate(t) * 1.15)
    groups: list[list[int]] = []
    start = 0
    while start < len(texts):
        stop = next_batch(texts, start, max_inputs=max_inputs, max_tokens=max_tokens, estimate=est)
        groups.append(list(range(start, stop)))
        start = stop
    return groups

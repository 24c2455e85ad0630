"""What one shard task hands back to the driver: ``ShardResult``, pickled across Ray.

Counts that reconcile (``rows_in == rows_embedded + rows_dead_letter`` for a finished shard), what its requests
cost, where it ran, and — when it failed — the error itself (every ``JinaBatchError`` pickles with its
attributes), so the driver tells a bad run (``AuthError``, ``BillingError``...) from a bad shard by its class.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import JinaBatchError

__all__ = ["ShardResult"]


@dataclass
class ShardResult:
    shard: int  # the plan's shard index
    name: str  # shard-NNNNN
    rows_in: int
    rows_embedded: int = 0
    rows_dead_letter: int = 0
    rows_truncated: int = 0
    reasons: dict[str, int] = field(default_factory=dict)  # dead-letter reason -> rows
    tokens: int = 0
    requests: int = 0
    retries: int = 0
    http_429: int = 0
    status: str = "done"  # done | failed
    error: BaseException | None = None  # why it failed: a JinaBatchError, or what Ray raised for a crashed task
    seconds: float = 0.0
    node: str | None = None  # Ray node that ran it
    raw_tokens: float = 0.0  # uncalibrated estimate of what was sent: tokens / raw_tokens calibrates the next plan
    rows_reused: int = 0  # vectors carried over from output.previous (no request)
    key: str | None = None  # the key of the pool it used (key0, key1...; never the value)

    @classmethod
    def failed(cls, shard, error: BaseException) -> "ShardResult":
        """The result of ``shard`` (an ``embed.plan.Shard``) that stopped with ``error``: nothing written."""
        return cls(shard.index, shard.name, shard.rows, status="failed", error=error)

    @property
    def error_type(self) -> str | None:
        return type(self.error).__name__ if self.error is not None else None

    @property
    def error_text(self) -> str | None:
        """One line for logs and reports: our own errors speak for themselves, anything else says its class."""
        if self.error is None:
            return None
        return str(self.error) if isinstance(self.error, JinaBatchError) else f"{self.error_type}: {self.error}"

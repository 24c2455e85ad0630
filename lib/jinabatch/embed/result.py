"""What one shard task hands back to the driver: ``ShardResult``, pickled across Ray.

Its counts and spend (``observe.records.ShardOutcome``: rows that reconcile, tokens, requests, where it ran) and —
when it failed — the exception itself (every ``JinaBatchError`` pickles with its attributes), so the driver tells a
bad run (``AuthError``, ``BillingError``...) from a bad shard by its class. ``record`` is the run log's line for it.
"""
from __future__ import annotations

from typing import Any

from pydantic import ConfigDict

from ..errors import JinaBatchError
from ..observe.records import ShardOutcome, ShardRecord

__all__ = ["ShardResult"]


class ShardResult(ShardOutcome):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    exception: BaseException | None = None  # why it failed: a JinaBatchError, or what Ray raised for a crashed task

    @classmethod
    def failed(cls, shard, exception: BaseException) -> "ShardResult":
        """The result of ``shard`` (an ``embed.plan.Shard``) that stopped with ``exception``: nothing written."""
        return cls(shard=shard.index, name=shard.name, rows_in=shard.rows, status="failed", exception=exception)

    @property
    def error_type(self) -> str | None:
        """The exception's class name."""
        return type(self.exception).__name__ if self.exception is not None else None

    @property
    def error_text(self) -> str | None:
        """One line for logs and reports: our own errors speak for themselves, anything else says its class."""
        if self.exception is None:
            return None
        e = self.exception
        return str(e) if isinstance(e, JinaBatchError) else f"{self.error_type}: {e}"

    def record(self, **extra: Any) -> ShardRecord:
        """The run log's record of this result, the error as text; ``extra``: more of its fields (shard_key...)."""
        return ShardRecord(**self.model_dump(exclude={"exception"}), error=self.error_text,
                           error_type=self.error_type, **extra)

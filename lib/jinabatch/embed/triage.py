"""What happens to each row of a shard before any request: the row triage, a pure function.

Every row gets one verdict, in this order of checks:

=================  ===================================================================  =====================
verdict            when                                                                 then
=================  ===================================================================  =====================
dead               null id, a later duplicate id (found by the planner), null or empty  dead letter with the
                   text, no document under late chunking                                reason
reused             unchanged since ``output.previous`` (the plan's reuse join)          its vector is copied
keep               within the model's token limit by estimate — or over it under         packed with others
                   ``on_too_long = "truncate"`` (sent with ``truncate: true``; counted)
alone              over the limit by estimate under ``skip`` / ``fail``                  a request of its own:
                                                                                        the API decides
dead / refused     so far over (raw estimate > ``CLEARLY_OVER`` × the limit) that no    ``skip``: dead letter;
                   tokenizer could fit it                                               ``fail``: the run stops
=================  ===================================================================  =====================

The estimate starts pessimistic, so it alone would refuse rows that fit: near the limit the API's answer decides
(a 400 dead-letters the row under ``skip`` or stops the run under ``fail``). Nothing here reads a file or sends a
request; the worker applies the verdicts.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from ..jina.tokens import raw_estimate

__all__ = ["Triage", "triage", "reason_key", "CLEARLY_OVER"]

# A row is judged too long without asking the API only when even the uncalibrated estimate (UTF-8 bytes / 4)
# is this many times the model's limit (16+ bytes per token: no tokenizer does that on text).
CLEARLY_OVER = 4.0


@dataclass
class Triage:
    """The verdicts for one group of rows, by row index in the group."""

    keep: list[int] = field(default_factory=list)  # to embed, packed with other rows
    alone: list[tuple[int, str]] = field(default_factory=list)  # (row, label of the API's refusal): one request each
    dead: dict[int, str] = field(default_factory=dict)  # row -> dead-letter reason
    reused: dict[int, int] = field(default_factory=dict)  # row -> its location in output.previous
    refused: tuple[int, str] | None = None  # on_too_long = "fail": the first row clearly over the limit, and why
    truncated: int = 0  # kept although over the limit by estimate (on_too_long = "truncate")
    raw_tokens: float = 0.0  # uncalibrated estimate of every row that was estimated (not dead before, not reused)


def reason_key(reason: str) -> str:
    """The kind of a dead-letter reason, as the report counts it: ``"duplicate id (first at ...)"`` → ``"duplicate id"``."""
    return reason.split(" (", 1)[0].split(":", 1)[0]


def triage(ids: Sequence, texts: Sequence[str | None], positions: Sequence[int], *, estimate: Callable[[str], int],
           limit: int, on_too_long: str, duplicates: Mapping[int, str] | None = None,
           reuse: Mapping[int, int] | None = None, documents: Sequence | None = None,
           document_column: str | None = None) -> Triage:
    """The verdict on every row (see the module docstring).

    ``ids`` / ``texts`` / ``positions``: the rows' ids, texts and corpus positions; ``estimate(text)``: calibrated
    tokens; ``limit``: the model's tokens per input; ``duplicates``: position -> reason for later duplicate ids;
    ``reuse``: position -> location in ``output.previous``; ``documents`` (late chunking): each row's document,
    ``document_column`` naming it in the reason. Stops at the first refused row (the run ends there)."""
    duplicates, reuse = duplicates or {}, reuse or {}
    t = Triage()
    for i, (id_, text, pos) in enumerate(zip(ids, texts, positions)):
        if id_ is None:
            t.dead[i] = "null id"
        elif pos in duplicates:
            t.dead[i] = duplicates[pos]
        elif text is None:
            t.dead[i] = "null text"
        elif not text.strip():
            t.dead[i] = "empty text"
        elif documents is not None and documents[i] is None:  # no document to embed it in the context of
            t.dead[i] = f"null document ({document_column})"
        elif pos in reuse:  # unchanged since output.previous: its vector is carried over
            t.reused[i] = reuse[pos]
        else:
            est, raw = estimate(text), raw_estimate(text)
            t.raw_tokens += raw
            if est <= limit:
                t.keep.append(i)
            elif on_too_long == "truncate":
                t.truncated += 1  # by estimate: the API truncates what is really over
                t.keep.append(i)
            elif raw > limit * CLEARLY_OVER:
                if on_too_long == "fail":
                    t.refused = (i, f"about {est} tokens, over the model's {limit}")
                    return t
                t.dead[i] = f"too long: about {est} tokens > {limit} (jina.on_too_long = skip)"
            else:
                t.alone.append((i, f"too long (about {est} tokens > {limit})"))
    return t

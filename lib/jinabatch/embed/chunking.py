"""Late chunking in the batch job: requests that hold the chunks of one document only, in order.

With ``jina.late_chunking = true`` the API joins all inputs of a request into one sequence and embeds each
chunk in the context of the others, so a request must never mix documents. ``corpus.document_column`` names
each row's document and ``corpus.chunk_order_column`` (optional) orders a document's chunks; a shard's rows
are grouped by document (in order of first appearance) and each document becomes one or more *windows* —
consecutive chunks whose estimated tokens fit the model's context (and the request caps). A document longer
than the context is thus split into consecutive windows that each fit (the report counts those documents); a
window the API still finds too long is split in halves by the worker's bisect, which keeps windows consecutive.

A document is never split between shards: the plan cuts shards at document boundaries and refuses a corpus
whose documents are not in consecutive rows (``embed.documents``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa

from ..config import CorpusSettings
from ..errors import ConfigError
from ..jina.tokens import plan_batches

if TYPE_CHECKING:
    from ..jina.client import JinaClient

__all__ = ["document_windows", "check_late_chunking", "Windows"]


@dataclass
class Windows:
    """A shard's requests under late chunking: ``rows`` = one list of row indices per window."""

    rows: list[list[int]]
    documents: int  # documents with at least one row in a window
    split: int  # documents longer than one window's context: sent as several consecutive windows


def check_late_chunking(cs: CorpusSettings) -> None:
    """Late chunking needs to know which rows belong to one document."""
    if not cs.document_column:
        raise ConfigError("jina.late_chunking = true joins all inputs of a request into one sequence, so the job must "
                          "know which rows are chunks of one document: set corpus.document_column (and "
                          "corpus.chunk_order_column if the rows are not in chunk order), or set late_chunking = false")


def document_windows(table: pa.Table, rows: list[int], cs: CorpusSettings, client: "JinaClient") -> Windows:
    """``rows`` (indices into ``table``) grouped into windows: each one document's consecutive chunks, in order,
    fitting the model's context and the request caps."""
    docs = table.column(cs.document_column).to_pylist()
    order = table.column(cs.chunk_order_column).to_pylist() if cs.chunk_order_column else None
    texts = table.column(cs.text_column).to_pylist()
    by_doc: dict[object, list[int]] = {}
    for i in rows:
        by_doc.setdefault(docs[i], []).append(i)
    cap = client.max_tokens(late_chunking=True)
    windows: list[list[int]] = []
    split = 0
    for chunk_rows in by_doc.values():
        if order is not None:
            chunk_rows = sorted(chunk_rows, key=lambda i: (order[i] is None, order[i] if order[i] is not None else 0))
        groups = plan_batches([texts[i] for i in chunk_rows], max_inputs=client.max_inputs, max_tokens=cap,
                              estimate=client.estimator.estimate_one)  # consecutive, so chunks stay in order
        windows += [[chunk_rows[g] for g in group] for group in groups]
        split += len(groups) > 1
    return Windows(windows, len(by_doc), split)

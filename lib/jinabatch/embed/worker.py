"""One shard, start to finish, inside a worker: read → check → pack → embed → write.

This is the loop the Ray task runs (``jinabatch.embed.driver`` wraps it); it knows nothing of Ray, so it can be
tested on its own with a real client against the local server.

* Rows stream in record batches from the shard's row groups; memory follows the shard, not the corpus.
* Each row is checked: null id, null/empty text, duplicate id (found by the planner) go to the
  dead-letter list with the reason. Too long is the API's call: under ``"skip"`` / ``"fail"`` a row over
  the model's limit by estimate is sent alone and only the API's 400 dead-letters it (skip) or stops the
  run naming id and file (fail) — the estimate starts pessimistic, so it alone would refuse rows that fit;
  only a row far beyond any tokenizer (``CLEARLY_OVER``) is judged without a request. Under
  ``"truncate"`` requests are sent with ``truncate: true``.
* Rows are packed into requests (input cap and token budget) and sent concurrently, as many as the
  limiter allows; results are written in input order as they complete, so a worker keeps its requests
  flowing across record-batch boundaries. Packing runs across batches too: the last, partial request
  planned from a batch waits for the next batch's rows, so only a shard's last request is short (under
  RPM, short requests would waste requests a minute could fill).
* A request the API rejects as invalid (400/422) is split in halves until the bad rows are isolated:
  those rows go to the dead letters with the API's reason, the rest are embedded. Transient failures
  are retried by the client; what stays failed fails the shard (which the driver reports, and a rerun
  retries) — a row is never silently dropped.
"""
from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from ..config import Config
from ..errors import BadRowError, ConfigError, InvalidRequest
from ..jina.client import JinaClient
from ..jina.tokens import raw_estimate
from ..storage import Storage
from .chunking import document_windows
from .dedup import read_duplicates
from .incremental import PrevVectors, read_reuse, text_hashes
from .plan import Shard
from .reader import RowBatch, read_shard
from .shards import ShardWriter, write_dead_letter

__all__ = ["ShardResult", "process_shard", "shard_meta"]

READ_BATCH_ROWS = 1024
# A row is judged too long without asking the API only when even the uncalibrated estimate (UTF-8 bytes / 4)
# is this many times the model's limit (16+ bytes per token: no tokenizer does that on text). Below that the
# estimate can be off either way (it starts pessimistic), so a row over the limit by estimate goes alone in
# its own request and the API decides: a 400 dead-letters (skip) or stops (fail) just that row.
CLEARLY_OVER = 4.0
FLOAT_TYPES = ("base64", "float")  # embedding types that decode to float32 vectors


@dataclass
class ShardResult:
    shard: int
    name: str
    rows_in: int
    rows_embedded: int
    rows_dead_letter: int
    rows_truncated: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    tokens: int = 0
    requests: int = 0
    retries: int = 0
    http_429: int = 0
    status: str = "done"  # done | skipped | failed
    error: str | None = None
    error_type: str | None = None
    seconds: float = 0.0
    node: str | None = None  # Ray node that ran it
    raw_tokens: float = 0.0  # uncalibrated estimate of what was sent: tokens / raw_tokens calibrates the next plan
    rows_reused: int = 0  # vectors carried over from output.previous (no request)
    key: str | None = None  # the key of the pool it used (key0, key1...; never the value)
    documents: int = 0  # late chunking: documents embedded, and those longer than the context (several windows)
    documents_split: int = 0


def shard_meta(config: Config, shard: Shard) -> dict[str, Any]:
    """What a finished shard's footer says about how it was made: settings and every piece (never the key)."""
    j = config.jina
    return {**config.embedding_key(), "embedding_type": j.embedding_type, "shard": shard.index,
            "shard_key": shard.key, "start": shard.start, "stop": shard.stop, "pieces": [p.describe() for p in shard.pieces],
            "fingerprint": config.fingerprint(), "id_column": config.corpus.id_column,
            "columns": list(config.corpus.columns)}


def _reason_key(reason: str) -> str:
    return reason.split(" (", 1)[0].split(":", 1)[0]


async def _embed_rows(client: JinaClient, texts: list[str], truncate: bool) -> tuple[np.ndarray, list[int], dict[int, str], int]:
    """Embed ``texts``; on an invalid-request answer split to find the bad rows.

    Returns (vectors of the good rows, their positions, {position: reason} for the bad ones, tokens).
    """
    try:
        r = await client.embed_batch(texts, truncate=truncate)
        return r.vectors, list(range(len(texts))), {}, r.tokens
    except InvalidRequest as e:
        if len(texts) == 1:
            return np.empty((0, 0), np.float32), [], {0: f"rejected by the API: {e}"}, 0
    mid = len(texts) // 2
    (va, pa_, ba, ta), (vb, pb, bb, tb) = await asyncio.gather(
        _embed_rows(client, texts[:mid], truncate), _embed_rows(client, texts[mid:], truncate))
    parts = [v for v in (va, vb) if len(v)]
    vectors = np.concatenate(parts) if parts else np.empty((0, 0), np.float32)
    return vectors, pa_ + [p + mid for p in pb], {**ba, **{p + mid: why for p, why in bb.items()}}, ta + tb


class _Batch:
    """Rows waiting for their requests (one record batch, or a whole shard under late chunking): written in order
    once all are back. Knows each row's file, row in that file and corpus position."""

    def __init__(self, parts: list[RowBatch]):
        self.table = parts[0].table if len(parts) == 1 else pa.concat_tables([p.table for p in parts])
        self._parts = parts
        self._starts = np.cumsum([0] + [p.table.num_rows for p in parts[:-1]])
        self.vectors: dict[int, np.ndarray] = {}
        self.dead: dict[int, str] = {}
        self.tasks: list[asyncio.Task] = []
        self.held = 0  # rows waiting in the carried partial request: not sent yet
        self.texts: list[str] = []  # the text column as Python strings (set when the batch is checked)

    def _part(self, i: int) -> tuple[RowBatch, int]:
        k = int(np.searchsorted(self._starts, i, side="right")) - 1
        return self._parts[k], i - int(self._starts[k])

    def file(self, i: int) -> str:
        return self._part(i)[0].file

    def row(self, i: int) -> int:
        part, off = self._part(i)
        return part.row0 + off

    def pos(self, i: int) -> int:
        part, off = self._part(i)
        return part.pos0 + off


def _at_least(batches: Iterator[RowBatch], rows: int) -> Iterator[list[RowBatch]]:
    """Consecutive record batches grouped until each group holds at least ``rows`` rows (the last may hold less)."""
    group: list[RowBatch] = []
    n = 0
    for rb in batches:
        group.append(rb)
        n += rb.table.num_rows
        if n >= rows:
            yield group
            group, n = [], 0
    if group:
        yield group


async def process_shard(config: Config, shard: Shard, client: JinaClient, out: Storage, *,
                        id_field: pa.Field, carried: list[pa.Field],
                        on_rows: Callable[[int], None] | None = None, max_pending: int = 64) -> ShardResult:
    cs, j = config.corpus, config.jina
    if j.embedding_type not in FLOAT_TYPES:  # packed sign bits would land in list<float32> as byte values
        raise ConfigError(f"jina.embedding_type = {j.embedding_type!r}: the embed stage writes float32 vectors; "
                          "use \"base64\" (fastest) or \"float\"")
    truncate = j.on_too_long == "truncate"
    limit = j.spec.max_tokens
    writer = ShardWriter(out, shard.name, id_field, carried, shard_meta(config, shard))
    dead_rows: list[dict[str, Any]] = []
    res = ShardResult(shard.index, shard.name, shard.rows, 0, 0)
    pending: deque[_Batch] = deque()
    live: set[asyncio.Task] = set()  # requests not answered yet
    # The last request planned from a batch is usually partial: its rows wait for the next batch's rows instead
    # of going out short (under RPM, short requests would waste up to half of each minute's requests).
    carry: list[tuple[_Batch, int]] = []

    def dead(b: _Batch, i: int, reason: str) -> None:
        b.dead[i] = reason

    async def flush(b: _Batch) -> None:
        if b.held:  # its last rows wait in the carried request: send it as it is
            send_carry()
        await asyncio.gather(*b.tasks)
        ids = b.table.column(cs.id_column)
        texts = b.table.column(cs.text_column)
        for i, why in sorted(b.dead.items()):
            dead_rows.append({"id": ids[i].as_py(), "source_file": b.file(i), "row": b.row(i),
                              "reason": why, "text": texts[i].as_py()})
            res.reasons[_reason_key(why)] = res.reasons.get(_reason_key(why), 0) + 1
        good = np.array(sorted(b.vectors), dtype=np.int64)
        if len(good):
            sub = b.table.take(pa.array(good))
            vecs = np.stack([b.vectors[int(i)] for i in good])
            writer.write(sub.column(cs.id_column).combine_chunks(), vecs,
                         [sub.column(c).combine_chunks() for c in cs.columns],
                         text_hashes(sub.column(cs.text_column).to_pylist()))
        res.rows_embedded += len(good)
        res.rows_dead_letter += len(b.dead)
        if on_rows:
            on_rows(len(good) + len(b.dead))

    async def run_group(members: list[tuple[_Batch, int]], label: str | None = None) -> None:
        texts = [b.texts[i] for b, i in members]
        vectors, ok, bad, tokens = await _embed_rows(client, texts, truncate)
        for k, pos in enumerate(ok):
            b, i = members[pos]
            b.vectors[i] = vectors[k]
        for pos, why in bad.items():
            why = f"{label}: {why}" if label else why
            b, i = members[pos]
            if j.on_too_long == "fail":
                raise BadRowError(f"{b.file(i)} row {b.row(i)} (id {b.table.column(cs.id_column)[i].as_py()!r}): "
                                  f"{why}; set jina.on_too_long = \"truncate\" or \"skip\" to go on")
            dead(b, i, why)

    def send(members: list[tuple[_Batch, int]], label: str | None = None) -> None:
        task = asyncio.ensure_future(run_group(members, label))
        live.add(task)
        task.add_done_callback(live.discard)
        for b in {id(b): b for b, _ in members}.values():  # a carried request belongs to every batch it serves
            b.tasks.append(task)

    def send_carry() -> None:
        if carry:
            for b, _ in carry:
                b.held -= 1
            send(carry[:])
            carry.clear()

    try:
        duplicates = read_duplicates(out, shard.start, shard.stop)
        reuse = read_reuse(out, shard.start, shard.stop)
        previous = PrevVectors(config.output.previous, config.storage) if reuse else None
        late = j.late_chunking
        extra = [c for c in (cs.document_column, cs.chunk_order_column) if late and c]
        columns = list(dict.fromkeys([cs.id_column, cs.text_column, *cs.columns, *extra]))
        batches = read_shard(shard, columns, {f.name: f.type for f in carried}, config.storage,
                             batch_rows=READ_BATCH_ROWS)
        if late:  # a document's chunks must meet in one request: the whole shard is one batch
            parts = list(batches)
            groups_in = [parts] if parts else []
        else:  # small pieces (tiny files, a range's edge) are packed together: requests don't follow file shapes
            groups_in = _at_least(batches, READ_BATCH_ROWS)
        groups_in = iter(groups_in)
        while True:  # read in a thread: the next rows (a file open, an object-store round trip) overlap the requests
            rows_in = await asyncio.to_thread(next, groups_in, None)
            if rows_in is None:
                break
            b = _Batch(rows_in)
            ids, texts = b.table.column(cs.id_column).to_pylist(), b.table.column(cs.text_column).to_pylist()
            b.texts = texts
            docs = b.table.column(cs.document_column).to_pylist() if late else None
            keep: list[int] = []
            alone: list[tuple[int, str]] = []  # over the limit by estimate: one request each, the API decides
            for i, (id_, t) in enumerate(zip(ids, texts)):
                pos = b.pos(i)
                if id_ is None:
                    dead(b, i, "null id")
                elif pos in duplicates:
                    dead(b, i, duplicates[pos])
                elif t is None:
                    dead(b, i, "null text")
                elif not t.strip():
                    dead(b, i, "empty text")
                elif late and docs[i] is None:  # no document to embed it in the context of
                    dead(b, i, f"null document ({cs.document_column})")
                elif pos in reuse:  # unchanged since output.previous: its vector is carried over
                    b.vectors[i] = previous.get(reuse[pos])
                    res.rows_reused += 1
                else:
                    est = client.estimator.estimate_one(t)
                    res.raw_tokens += raw_estimate(t)
                    if est <= limit:
                        keep.append(i)
                    elif truncate:
                        res.rows_truncated += 1  # by estimate: the API truncates what is really over
                        keep.append(i)
                    elif raw_estimate(t) > limit * CLEARLY_OVER:
                        if j.on_too_long == "fail":
                            raise BadRowError(f"{b.file(i)} row {b.row(i)} (id {id_!r}): about {est} tokens, over "
                                              f"the model's {limit}; set jina.on_too_long = \"truncate\" or \"skip\"")
                        dead(b, i, f"too long: about {est} tokens > {limit} (jina.on_too_long = skip)")
                    else:
                        alone.append((i, f"too long (about {est} tokens > {limit})"))
            if late:
                windows = document_windows(b.table, keep, cs, client)
                res.documents += windows.documents
                res.documents_split += windows.split
                groups = [([(b, i) for i in rows], None) for rows in windows.rows]
            else:
                for hb, _ in carry:
                    hb.held -= 1
                cand = carry + [(b, i) for i in keep]
                carry.clear()
                groups = [([cand[g] for g in group], None)
                          for group in client.plan_batches([hb.texts[i] for hb, i in cand])]
                if groups:  # the last one waits for the next batch's rows (or the end of the shard)
                    carry.extend(groups.pop()[0])
                    for hb, _ in carry:
                        hb.held += 1
            groups += [([(b, i)], label) for i, label in alone]
            for members, label in groups:
                send(members, label)
            pending.append(b)
            await asyncio.sleep(0)  # let the new requests start while the next batch is read
            while pending and (len(live) > max_pending
                               or (not pending[0].held and all(t.done() for t in pending[0].tasks))):
                await flush(pending.popleft())
        send_carry()
        while pending:
            await flush(pending.popleft())
        assert res.rows_embedded + res.rows_dead_letter == shard.rows, "row count does not reconcile"
        write_dead_letter(out, shard.name, dead_rows, id_field.type)
        # counts a resumed run reports for this shard without reading its dead letters
        writer.commit(rows_dead_letter=res.rows_dead_letter, reasons=res.reasons, rows_truncated=res.rows_truncated,
                      rows_reused=res.rows_reused, documents=res.documents, documents_split=res.documents_split)
    except BaseException:
        for t in live:
            t.cancel()
        writer.abort()
        raise
    st = client.stats
    res.tokens, res.requests, res.retries, res.http_429 = st.tokens, st.requests, st.retries, st.http_429
    return res

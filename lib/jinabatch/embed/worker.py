"""One shard, start to finish, inside a worker: read → triage → pack → embed → write.

This is the loop the Ray task runs (``jinabatch.embed.task`` wraps it); it knows nothing of Ray, so it can be
tested on its own with a real client against the local server.

* Rows stream in groups of record batches (``embed.rows.ShardInput``); memory follows the shard, not the corpus.
* Each row gets a verdict (``embed.triage``): dead letter with its reason, vector carried over, packed with
  others, or sent alone so the API decides whether it is too long. Under ``"truncate"`` requests are sent with
  ``truncate: true``.
* Rows are packed into requests (input cap and token budget) by one ``RequestPacker`` and sent concurrently, as
  many as the limiter allows; results are written in input order as they complete, so a worker keeps its
  requests flowing across group boundaries. Packing runs across groups too: the last, partial request planned
  from a group waits for the next group's rows, so only a shard's last request is short (under RPM, short
  requests would waste requests a minute could fill). Under late chunking a request is one document's window.
* A request the API rejects as invalid (400/422) is split in halves until the bad rows are isolated: those rows
  go to the dead letters with the API's reason, the rest are embedded. When the refusal named a smaller cap on
  inputs per request (a model whose cap Jina does not publish), the request is cut to that cap instead.
  Transient failures are retried by the client; what stays failed fails the shard (which the driver reports, and
  a rerun retries) — a row is never silently dropped.
"""
from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from ..config import Config
from ..errors import BadRowError, ConfigError, InvalidRequest
from ..jina.client import JinaClient
from ..jina.tokens import TokenEstimator
from ..storage import Storage
from .chunking import document_windows
from .plan import Shard
from .result import ShardResult
from .rows import PendingRows, ShardInput, ShardOutput
from .triage import Triage, triage

__all__ = ["ShardResult", "RequestPacker", "process_shard", "spend", "shard_meta", "judge_group", "FLOAT_TYPES", "NO_LIMIT"]

FLOAT_TYPES = ("base64", "float")  # embedding types that decode to float32 vectors
NO_LIMIT = 2 ** 62  # the token limit triage judges by when the model's is not published
Member = tuple[PendingRows, int]  # one row of a request: its group and its index there


def shard_meta(config: Config, shard: Shard) -> dict[str, Any]:
    """What a finished shard's footer says about how it was made: settings and every piece (never the key)."""
    return {**config.embedding_key(), "shard": shard.index,
            "shard_key": shard.key, "start": shard.start, "stop": shard.stop, "pieces": [p.describe() for p in shard.pieces],
            "fingerprint": config.fingerprint(), "id_column": config.corpus.id_column,
            "columns": list(config.corpus.columns)}


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
    size = client.max_inputs if len(texts) > client.max_inputs else (len(texts) + 1) // 2  # a cap it named, else halves
    cuts = list(range(0, len(texts), size))
    parts = await asyncio.gather(*[_embed_rows(client, texts[c:c + size], truncate) for c in cuts])
    vectors = [v for v, *_ in parts if len(v)]
    ok = [p + c for c, (_, pos, _, _) in zip(cuts, parts) for p in pos]
    bad = {p + c: why for c, (_, _, b, _) in zip(cuts, parts) for p, why in b.items()}
    return (np.concatenate(vectors) if vectors else np.empty((0, 0), np.float32)), ok, bad, sum(t for *_, t in parts)


class RequestPacker:
    """Rows → requests, across groups. ``pack`` cuts the rows it is given, after the ones it carried, into full
    requests with ``plan(texts)`` (index groups: ``JinaClient.plan_batches``) and keeps the last, usually partial,
    request back — its rows wait for the next group's (``PendingRows.held`` counts them) — until ``drain``."""

    def __init__(self, plan: Callable[[Sequence[str]], list[list[int]]]):
        self._plan = plan
        self._carry: list[Member] = []

    def pack(self, members: list[Member]) -> list[list[Member]]:
        """Full requests of the carried rows and then ``members``, in order; the last one is carried."""
        cand = self._take() + members
        requests = [[cand[g] for g in group] for group in self._plan([b.texts[i] for b, i in cand])]
        if requests:
            self._carry = requests.pop()
            for b, _ in self._carry:
                b.held += 1
        return requests

    def drain(self) -> list[Member] | None:
        """The carried request, to send as it is (the end of the shard, or a group that must be written now)."""
        return self._take() or None

    def _take(self) -> list[Member]:
        carry, self._carry = self._carry, []
        for b, _ in carry:
            b.held -= 1
        return carry


class _Requests:
    """The shard's requests in flight: each fills its rows' vectors (or dead-letters the rows the API refused)."""

    def __init__(self, client: JinaClient, on_too_long: str):
        self.client, self.on_too_long = client, on_too_long
        self.live: set[asyncio.Task] = set()  # not answered yet

    def send(self, members: list[Member], label: str | None = None) -> None:
        """One request for ``members``; ``label`` prefixes the reason if the API refuses one of them."""
        task = asyncio.ensure_future(self._run(members, label))
        self.live.add(task)
        task.add_done_callback(self.live.discard)
        for b in {id(b): b for b, _ in members}.values():  # a carried request belongs to every group it serves
            b.tasks.append(task)

    async def _run(self, members: list[Member], label: str | None) -> None:
        vectors, ok, bad, _ = await _embed_rows(self.client, [b.texts[i] for b, i in members],
                                                self.on_too_long == "truncate")
        for k, pos in enumerate(ok):
            b, i = members[pos]
            b.vectors[i] = vectors[k]
        for pos, why in bad.items():
            why = f"{label}: {why}" if label else why
            b, i = members[pos]
            if self.on_too_long == "fail":
                raise BadRowError(f"{b.where(i)}: {why}; set jina.on_too_long = \"truncate\" or \"skip\" to go on")
            b.dead[i] = why

    def cancel(self) -> None:
        for t in self.live:
            t.cancel()


def judge_group(config: Config, estimator: TokenEstimator, rows: ShardInput, b: PendingRows,
                res: ShardResult) -> Triage:
    """The triage of group ``b`` with what needs no request already applied: dead letters, vectors carried over,
    counts in ``res``. A row refused under ``on_too_long = "fail"`` stops the shard (BadRowError naming it)."""
    cs, j = config.corpus, config.jina
    documents = b.table.column(cs.document_column).to_pylist() if j.late_chunking else None
    verdict = triage(b.ids, b.texts, b.positions, estimate=estimator.estimate_one,
                     limit=j.spec.max_tokens or NO_LIMIT,  # a context Jina does not publish: the API decides
                     on_too_long=j.on_too_long, duplicates=rows.duplicates, reuse=rows.reuse, documents=documents,
                     document_column=cs.document_column)
    if verdict.refused:
        i, why = verdict.refused
        raise BadRowError(f"{b.where(i)}: {why}; set jina.on_too_long = \"truncate\" or \"skip\"")
    b.dead.update(verdict.dead)
    for i, loc in verdict.reused.items():  # a delta's shards hold no unchanged row: only a full output copies
        b.vectors[i] = rows.previous.get(loc)
    res.rows_reused += len(verdict.reused)
    res.rows_truncated += verdict.truncated
    res.raw_tokens += verdict.raw_tokens
    return verdict


async def process_shard(config: Config, shard: Shard, client: JinaClient, out: Storage, *,
                        id_field: pa.Field, carried: list[pa.Field],
                        on_rows: Callable[[int], None] | None = None, max_pending: int = 64) -> ShardResult:
    """Embed ``shard`` with ``client`` and write it (shard file and dead letters) under ``out``; returns its counts
    and the client's spend. ``id_field`` / ``carried``: the planned id and carried column types; ``on_rows(n)``
    hears of rows as they are written; at most ``max_pending`` requests are in flight before the oldest group
    is written. Raises what stops the shard (``BadRowError`` under ``on_too_long = "fail"``, client errors)."""
    cs, j = config.corpus, config.jina
    if j.wire_type not in FLOAT_TYPES:  # packed sign bits would land in list<float32> as byte values
        raise ConfigError(f"jina.embedding_type = {j.embedding_type!r}: the embed stage writes float32 vectors; "
                          "use \"base64\" (fastest) or \"float\"")
    output = ShardOutput(out, shard, id_field, carried, shard_meta(config, shard), cs, on_rows)
    truncate = j.on_too_long == "truncate"  # an input sent with truncate is estimated at most the model's cap
    res, requests = output.result, _Requests(client, j.on_too_long)
    packer = RequestPacker(lambda texts: client.plan_batches(texts, truncate=truncate))
    pending: deque[PendingRows] = deque()

    async def write(b: PendingRows) -> None:
        if b.held:  # its last rows wait in the carried request: send it as it is
            requests.send(packer.drain())
        await asyncio.gather(*b.tasks)
        output.write(b)

    try:
        rows = ShardInput.open(config, shard, out, carried)
        while (b := await rows.next_group(cs)) is not None:
            verdict = judge_group(config, client.estimator, rows, b, res)
            if j.late_chunking:  # a request is one document's window
                windows = document_windows(b.table, verdict.keep, cs, client)
                res.documents += windows.documents
                res.documents_split += windows.split
                batches = [[(b, i) for i in w] for w in windows.rows]
            else:
                batches = packer.pack([(b, i) for i in verdict.keep])
            for members in batches:
                requests.send(members)
            for i, label in verdict.alone:  # over the limit by estimate: one request each, the API decides
                requests.send([(b, i)], label)
            pending.append(b)
            await asyncio.sleep(0)  # let the new requests start while the next group is read
            while pending and (len(requests.live) > max_pending
                               or (not pending[0].held and all(t.done() for t in pending[0].tasks))):
                await write(pending.popleft())
        if (last := packer.drain()) is not None:
            requests.send(last)
        while pending:
            await write(pending.popleft())
        output.commit()
    except BaseException:
        requests.cancel()
        output.abort()
        raise
    spend(res, client)
    return res


def spend(res: ShardResult, client: JinaClient) -> None:
    """What the shard's requests cost, from the client's counters, into ``res`` (also for a failed shard)."""
    st = client.stats
    res.tokens, res.requests, res.retries, res.http_429 = st.tokens, st.requests, st.retries, st.http_429

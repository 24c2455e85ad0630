"""One shard through Jina's Batch Embeddings API (``jina.api = "batch"``), exactly once: read → triage → batches →
record → wait → download → write.

* Rows are read and judged as in the synchronous path (``embed.worker.judge_group``: dead letters, reuse). The
  batch body has no ``truncate``, so a row over the model's limit by the calibrated estimate is cut to fit it
  before it is submitted under ``on_too_long = "truncate"``; under ``skip`` / ``fail`` a row only somewhat over
  goes in the batch and the API decides per item (a failed item is a dead letter under ``skip`` and stops the run
  under ``fail``); a row clearly over never goes (triage).
* The rows to embed become parts of at most ``jina.batch.inputs_per_batch`` inputs, one batch each.
* **Durable before waiting**: as soon as the API accepts a batch its id, key, attempt and the corpus positions of
  its inputs go to ``_batches/NAME.json`` (``observe.records.ShardBatches``, one atomic write through
  ``storage``), before anything waits on it. A rerun — after a SIGKILL of the driver or of this worker — finds the
  recorded id of each part and waits on it or downloads it; it never submits that part again. The only window is
  between the API's 202 and that write (one small file write): a crash there leaves one batch nobody waits on,
  which is billed if it completes, and the rerun submits that part again — and says so, since the entry was
  written ``submitting`` before the submit (``unrecorded`` in the record and the report).
* A batch that ended ``failed`` (or that the API no longer knows: 404 / 410) is submitted again, at most
  ``jina.max_attempts`` submits of a part in one run; then the shard fails (a rerun tries again).
* Output lines are matched to rows by ``custom_id``; failed items (a non-200 ``status_code``, or listed by
  ``/errors``) and inputs the output never mentions go to the dead letters with the reason; lines for an id never
  submitted are counted (``unknown_lines``) and logged. The shard file is written as in the synchronous path
  (``embed.rows.ShardOutput``): whole or absent, same footer, counts that reconcile.
* On Ctrl+C (the task cancelled) or a run-stopping error (auth, balance, ``on_too_long = "fail"``) the batches still
  running are cancelled (DELETE) and the record says so; the driver does the same for the record of every shard
  it stops (``cancel_recorded``), since a worker killed by Ray has no chance to.
* Batches in flight (submitted, not finished) are capped per task (``in_flight``; the driver's share of
  ``jina.batch.max_in_flight`` per key); the API's own cap answers 429, which is retried like any 429.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa

from ..config import Config
from ..errors import AuthError, BadRowError, BatchGone, BillingError, JinaError
from ..jina.batch import BatchClient, BatchOutput, BatchStatus, Submitted
from ..jina.tokens import TokenEstimator, raw_estimate
from ..observe.records import BatchCounts, BatchEntry, ShardBatches
from ..storage import Storage
from .plan import Shard
from .result import ShardResult
from .rows import PendingRows, ShardInput, ShardOutput
from .worker import NO_LIMIT, judge_group, shard_meta

__all__ = ["process_shard_batches", "cancel_recorded", "truncate_to", "batch_parts", "batch_in_flight", "Part",
           "STOPPING"]

log = logging.getLogger("jinabatch.embed.batches")
Member = tuple[PendingRows, int]
LIVE = ("submitted", "processing")
RESUMABLE = ("submitted", "processing", "completed")
STOPPING = (AuthError, BillingError, BadRowError, asyncio.CancelledError, KeyboardInterrupt)  # cancel live batches


def truncate_to(text: str, limit: int, estimate: Callable[[str], int]) -> str:
    """``text`` cut (at a character) so that ``estimate`` puts it at ``limit`` tokens or fewer."""
    while estimate(text) > limit and text:
        text = text[: max(0, int(len(text) * limit / estimate(text) * 0.98))]
    return text


@dataclass
class Part:
    """One batch's worth of a shard's rows: ``members`` (group, row) in submitted order, their texts and positions,
    and for rows sent over the limit by estimate the label of an item failure."""

    index: int
    members: list[Member]
    texts: list[str]
    positions: list[int]
    labels: dict[int, str]


def batch_parts(members: list[Member], texts: list[str], labels: dict[int, str], size: int) -> list[Part]:
    """``members`` (with their texts to send) cut in consecutive parts of at most ``size``."""
    return [Part(k, members[s:s + size], texts[s:s + size],
                 [int(b.positions[i]) for b, i in members[s:s + size]],
                 {j - s: labels[j] for j in range(s, min(s + size, len(members))) if j in labels})
            for k, s in enumerate(range(0, len(members), size))]


async def _read_rows(config: Config, shard: Shard, out: Storage, carried: list[pa.Field], estimator: TokenEstimator,
                     res: ShardResult) -> tuple[list[PendingRows], list[Member], list[str], dict[int, str]]:
    """Every group of the shard judged; the rows to embed with the text each is sent as (cut to fit under
    ``truncate``) and the labels of the rows the API decides on."""
    j, cs = config.jina, config.corpus
    limit = j.spec.max_tokens or NO_LIMIT
    rows = ShardInput.open(config, shard, out, carried)
    groups, members, texts, labels = [], [], [], {}
    while (b := await rows.next_group(cs)) is not None:
        verdict = judge_group(config, estimator, rows, b, res)
        groups.append(b)
        for i in verdict.keep:
            text = b.texts[i]
            if j.on_too_long == "truncate" and estimator.estimate_one(text) > limit:
                text = truncate_to(text, limit, estimator.estimate_one)  # the batch body has no truncate
            members.append((b, i))
            texts.append(text)
        for i, label in verdict.alone:
            labels[len(members)] = label
            members.append((b, i))
            texts.append(b.texts[i])
    return groups, members, texts, labels


class _Batches:
    """A shard's parts through the API: the record, the in-flight cap, the counts."""

    def __init__(self, config: Config, shard: Shard, client: BatchClient, out: Storage, in_flight: asyncio.Semaphore,
                 estimator: TokenEstimator, record: ShardBatches | None = None, counts: BatchCounts | None = None):
        """``record``: the shard's batch record as already read (the driver's sweep); else it is read here, and
        what an earlier run left ``submitting`` is marked ``unrecorded``. ``counts``: where to count (a new one)."""
        self.config, self.shard, self.client, self.out = config, shard, client, out
        self.sem, self.estimator = in_flight, estimator
        self.counts = counts if counts is not None else BatchCounts()
        self.record = record if record is not None else self._load_record()
        if record is None:
            self._unrecorded()

    def _load_record(self) -> ShardBatches:
        s, fp = self.shard, self.config.fingerprint()
        rec = ShardBatches.read(self.out, s.name)
        if rec is not None and rec.shard_key == s.key and rec.fingerprint == fp:
            return rec
        if rec is not None:
            log.info("%s: its batch record is of other pieces or settings: not resumed", s.name)
        return ShardBatches(shard=s.index, name=s.name, shard_key=s.key, fingerprint=fp)

    def _save(self) -> None:
        self.record.write(self.out)

    def _resumable(self, part: Part) -> BatchEntry | None:
        e = self.record.latest(part.index)
        return e if e is not None and e.status in RESUMABLE and e.positions == part.positions else None

    async def _submit(self, part: Part, attempt: int) -> BatchEntry:
        """Submit the part; its entry is written as ``submitting`` first and with its id as soon as the API accepted
        it, so a crash in between is seen by the rerun (``unrecorded``) instead of going unnoticed."""
        e = BatchEntry(part=part.index, attempt=attempt, batch_id="", positions=part.positions, status="submitting")
        self.record.batches.append(e)
        self._save()
        try:
            sub: Submitted = await self.client.submit(part.texts)
        except BaseException as err:
            self.record.batches.remove(e)  # refused (or stopped before an answer): nothing was accepted
            self._save()
            raise err
        e.batch_id, e.key, e.status, e.submitted_at = sub.batch_id, f"key{sub.key}", "submitted", time.time()
        self._save()  # durable before anything waits on it
        self.counts.submitted += 1
        return e

    def _unrecorded(self) -> None:
        """Entries an earlier run left ``submitting``: it stopped between a submit and the write of its id."""
        for e in self.record.batches:
            if e.status == "submitting":
                self.counts.unrecorded += 1
                e.status, e.error = "unrecorded", ("the run stopped between submitting this part and recording the "
                                                   "batch id: if the API accepted it, that batch runs unwatched and "
                                                   "is billed if it completes; the part is submitted again")
                log.warning("%s part %d: %s", self.shard.name, e.part, e.error)
        if self.counts.unrecorded:
            self._save()

    def _ended(self, e: BatchEntry, status: str, error: str | None = None) -> None:
        e.status, e.error, e.finished_at = status, error, time.time()
        self._save()

    async def run(self, part: Part) -> tuple[BatchEntry, BatchOutput, BatchStatus]:
        """The part's batch — resumed if recorded, else submitted — waited on and downloaded; resubmitted when it
        failed or is gone, ``jina.max_attempts`` submits at most. A slot of the task's in-flight cap is held from
        before the submit until the batch has ended (not while it downloads)."""
        e, submits = self._resumable(part), 0
        first = e is not None  # a recorded batch is asked about at once
        if e is not None:
            self.counts.resumed += 1
            log.info("%s part %d: resuming batch %s (%s when recorded)", self.shard.name, part.index, e.batch_id,
                     e.status)
        while True:
            async with self.sem:
                if e is None:
                    if submits >= self.config.jina.max_attempts:
                        raise JinaError(self._gave_up(part))
                    prior = self.record.latest(part.index)
                    e = await self._submit(part, (prior.attempt + 1) if prior else 1)
                    submits += 1
                st = await self._wait(part, e, first)
            got = await self._download(part, e, st) if st is not None else None
            if got is not None:
                return e, got, st
            self.counts.resubmitted += 1
            e, first = None, False

    def _gave_up(self, part: Part) -> str:
        last = self.record.latest(part.index)
        return (f"{self.shard.name}: the batch of part {part.index} ({len(part.members)} rows) ended "
                f"{last.status if last else 'failed'} after {self.config.jina.max_attempts} submits "
                f"(jina.max_attempts){f': {last.error}' if last and last.error else ''}; a rerun submits it again")

    def _gone(self, part: Part, e: BatchEntry, g: BatchGone) -> None:
        self.counts.gone += 1
        self._ended(e, "gone", str(g))
        log.warning("%s: %s; submitting its %d rows again", self.shard.name, g, len(part.members))

    async def _wait(self, part: Part, e: BatchEntry, first: bool) -> BatchStatus | None:
        """Until ``e`` ends: its status if completed; None when it must be submitted again (failed, cancelled,
        gone)."""
        try:
            st = await self.client.wait(e.batch_id, int(e.key.removeprefix("key")), first=first,
                                        on_poll=lambda s: self._polled(e, s))
        except BatchGone as g:
            self._gone(part, e, g)
            return None
        if st.status == "completed":
            return st
        self.counts.failed += st.status == "failed"
        self._ended(e, st.status, st.error)
        log.warning("%s: batch %s ended %s%s; submitting its %d rows again", self.shard.name, e.batch_id,
                    st.status, f" ({st.error})" if st.error else "", len(part.members))
        return None

    async def _download(self, part: Part, e: BatchEntry, st: BatchStatus) -> BatchOutput | None:
        """The completed batch's output (with ``/errors`` when it lists more failures); None when it is gone."""
        key, n = int(e.key.removeprefix("key")), len(part.members)
        try:
            out = await self.client.output(e.batch_id, key, n, self.config.jina.dim)
            if st.failed > len(out.failed):
                out.failed.update(await self.client.errors(e.batch_id, key, n))
        except BatchGone as g:
            self._gone(part, e, g)
            return None
        c, done = self.counts, e.finished_at or time.time()  # when this job saw it end
        c.completed += 1
        c.wait_s += max(0.0, done - e.submitted_at)
        if e.processing_at is not None:  # seen by this run's polls (a resumed batch may have ended before)
            c.queued_s += max(0.0, min(e.processing_at, done) - e.submitted_at)
            c.processing_s += max(0.0, done - min(e.processing_at, done))
        return out

    def _polled(self, e: BatchEntry, st: BatchStatus) -> None:
        if st.status != e.status:  # recorded at each change of state only
            e.status = st.status
            if st.status != "submitted" and e.processing_at is None:
                e.processing_at = time.time()
            if st.terminal:
                e.finished_at = time.time()
            self._save()

    async def cancel_live(self, why: str) -> None:
        """DELETE every batch of this shard still running, and record it."""
        for e in self.record.batches:
            if e.status in LIVE:
                try:
                    done = await self.client.cancel(e.batch_id, int(e.key.removeprefix("key")))
                except JinaError as err:
                    log.warning("could not cancel batch %s: %s", e.batch_id, err)
                    e.error = f"cancel failed: {err}"
                    self._save()
                    continue
                if done:
                    self.counts.cancelled += 1
                    e.cancelled_by_job = True
                    log.warning("%s: cancelled batch %s (%s)", self.shard.name, e.batch_id, why)
                self._ended(e, "cancelled", why)


def _fill(part: Part, out: BatchOutput, batch_id: str, on_too_long: str) -> None:
    """The part's vectors into its rows; failed and missing items to the dead letters (under ``fail``: stop)."""
    for n, (b, i) in enumerate(part.members):
        if out.ok[n]:
            b.vectors[i] = out.vectors[n]
            continue
        why = out.failed.get(n)
        why = f"rejected by the Batch Embeddings API ({batch_id}): {why}" if why else \
            f"missing from the output of batch {batch_id}"
        if n in part.labels:
            why = f"{part.labels[n]}: {why}"
        if on_too_long == "fail":
            raise BadRowError(f"{b.where(i)}: {why}; set jina.on_too_long = \"truncate\" or \"skip\" to go on")
        b.dead[i] = why


async def _embed_parts(config: Config, runner: _Batches, parts: list[Part]) -> None:
    async def one(part: Part) -> None:
        e, out, _ = await runner.run(part)
        if out.unknown:
            runner.counts.unknown_lines += len(out.unknown)
            log.warning("%s: the output of batch %s has %d line(s) for custom_ids never submitted (%s): ignored",
                        runner.shard.name, e.batch_id, len(out.unknown), ", ".join(out.unknown[:3]))
        runner.counts.billed_tokens += out.tokens
        runner.estimator.observe(sum(raw_estimate(t) for t, ok in zip(part.texts, out.ok) if ok), out.tokens)
        _fill(part, out, e.batch_id, config.jina.on_too_long)

    tasks = [asyncio.ensure_future(one(p)) for p in parts]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()


async def process_shard_batches(config: Config, shard: Shard, client: BatchClient, out: Storage, *,
                                id_field: pa.Field, carried: list[pa.Field], in_flight: asyncio.Semaphore,
                                on_rows: Callable[[int], None] | None = None,
                                estimator: TokenEstimator | None = None,
                                counts: BatchCounts | None = None) -> ShardResult:
    """Embed ``shard`` through batches and write it like ``embed.worker.process_shard``; returns its counts (with
    ``batches``: ``counts`` if given, which the caller keeps when the shard fails). Raises what stops the shard; on a
    run-stopping error or cancellation its live batches are cancelled first."""
    estimator = estimator or TokenEstimator()
    output = ShardOutput(out, shard, id_field, carried, shard_meta(config, shard), config.corpus, on_rows)
    res = output.result
    runner = _Batches(config, shard, client, out, in_flight, estimator, counts=counts)
    res.batches = runner.counts
    try:
        groups, members, texts, labels = await _read_rows(config, shard, out, carried, estimator, res)
        parts = batch_parts(members, texts, labels, config.jina.batch.inputs_per_batch)
        await _embed_parts(config, runner, parts)
        for b in groups:
            output.write(b)
        output.commit()
    except BaseException as e:
        output.abort()
        if isinstance(e, STOPPING):
            await asyncio.shield(runner.cancel_live(f"the run stopped: {type(e).__name__}"))
        raise
    spend(res, client)
    return res


def spend(res: ShardResult, client: BatchClient) -> None:
    """What the shard's batches cost, from the client's counters, into ``res`` (also for a failed shard)."""
    c = client.counts
    res.tokens, res.requests = res.batches.billed_tokens, c["requests"]
    res.retries, res.http_429 = c["retries"], c["http_429"]
    res.batches.polls, res.batches.downloads = c["polls"], c["downloads"]
    res.batches.download_retries = c["download_retries"]


async def cancel_recorded(config: Config, out: Storage, shards: list[Shard], client: BatchClient,
                          why: str) -> BatchCounts:
    """The driver's sweep when it stops a run: every batch the records of ``shards`` show running is cancelled
    (DELETE) and recorded so (a worker Ray killed could not)."""
    counts = BatchCounts()
    for s in shards:
        rec = ShardBatches.read(out, s.name)
        if rec is None or not any(e.status in LIVE for e in rec.batches):
            continue
        runner = _Batches(config, s, client, out, asyncio.Semaphore(1), TokenEstimator(), record=rec)
        await runner.cancel_live(why)
        counts.add(runner.counts)
    return counts


def batch_in_flight(config: Config, keys: int) -> int:
    """Batches one shard task may have in flight: its share of ``jina.batch.max_in_flight`` per key, at least 1."""
    return max(1, config.jina.batch.max_in_flight * keys // max(1, config.ray.workers))


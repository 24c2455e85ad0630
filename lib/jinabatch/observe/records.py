"""The records a run writes, each typed once for its writer and every reader, and where they live.

Under the output root (a folder or an ``s3://`` prefix)::

    _manifest.json        Manifest      the run's snapshot (RunLog writes it; status and _report.html read it)
    _progress/*.jsonl     ShardRecord   one line per finished, failed or skipped shard (RunLog; resume, the page)
    _timeseries/*.jsonl   Sample        cumulative counters every few seconds (RunLog; the page)
    _batches/NAME.json    ShardBatches  batch mode: each batch of a shard, its id written before it is waited on

(``_report.json`` and ``_load_report.json`` are ``jinabatch.observe.report``'s ``EmbedReport`` and ``LoadReport``.)

Every record is a pydantic model: fields and defaults are declared here, a reader gets a value for every field
(a record of an older writer that lacks one gets its default; unknown fields are ignored). Records are written
as JSON (``to_json``; log lines leave null fields out) and also read like that JSON — ``record["rows_in"]``,
``record.get("key")`` — for tools and tests that treat them as the JSON they are; the library reads attributes.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from ..storage import Storage
from .chunklog import ChunkLog

__all__ = [
    "Record", "Counters", "KeyCounters", "Tally", "ShardOutcome", "ShardRecord", "Sample", "Limits", "PlanEstimate", "PlanSummary", "RunMeta",
    "ShardCounts", "RowCounts", "Rates", "RunningShard", "Failure", "ReportSummary", "Manifest",
    "BatchCounts", "BatchEntry", "ShardBatches", "BATCHES",
    "MANIFEST", "PROGRESS", "TIMESERIES", "COUNTERS", "read_batches", "read_progress", "read_timeseries",
    "OutputRef", "ChainRecord", "AppliedDelta", "PendingOp", "LedgerEntry", "CHAIN",
]

MANIFEST, PROGRESS, TIMESERIES, BATCHES = "_manifest.json", "_progress", "_timeseries", "_batches"
CHAIN = "_chain.json"  # ChainRecord: what an output is in a chain of refreshes
COUNTERS = ("rows", "tokens", "requests", "http_429", "retries")  # the fields of Counters

R = TypeVar("R", bound="Record")


class Record(BaseModel):
    """Base of every record: a pydantic model that also reads like the JSON it is written as."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    _drop_nulls: ClassVar[bool] = False  # log lines leave null fields out (one a shard or a sample: it adds up)

    @classmethod
    def of(cls: type[R], value: "Record | Mapping[str, Any]") -> R:
        """``value`` as this record: itself, or this record's fields of another record (a subclass's too), or
        validated from a mapping (its JSON)."""
        if type(value) is cls:
            return value
        return cls.model_validate(value.model_dump(by_alias=True) if isinstance(value, Record) else value)

    def to_json(self) -> dict[str, Any]:
        """The JSON object written for it."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=self._drop_nulls)

    def __getitem__(self, name: str) -> Any:
        """The value of field ``name`` (or its JSON alias), nested records as plain dicts."""
        fields = type(self).model_fields
        attr = name if name in fields else next((k for k, f in fields.items() if f.alias == name), None)
        if attr is None:
            raise KeyError(name)
        return self.model_dump(by_alias=True, include={attr})[fields[attr].alias or attr]

    def get(self, name: str, default: Any = None) -> Any:
        """``self[name]``, or ``default`` when there is no such field."""
        try:
            return self[name]
        except KeyError:
            return default


class Counters(Record):
    """Cumulative counters of a run, or of one key of the pool (``key0``...)."""

    rows: int = 0
    tokens: int = 0
    requests: int = 0
    http_429: int = 0
    retries: int = 0


class KeyCounters(Counters):
    """One key's counters in the report, with its share of its own budget."""

    utilization: float = 0.0
    binding_limit: str = "tpm"


class BatchCounts(Record):
    """Batch mode (``jina.api = "batch"``): what happened to a shard's (or a run's) batches."""

    submitted: int = 0  # submits the API accepted (first submits and resubmits)
    resumed: int = 0  # recorded by an earlier, killed attempt and waited on again instead of submitted
    resubmitted: int = 0  # submitted again: the batch ended failed, or the API no longer knew its id (gone)
    gone: int = 0  # of those, ids the API answered 404/410 for
    unrecorded: int = 0  # submits an earlier run made and died before recording their id (a batch may run unwatched)
    failed: int = 0  # batches that ended "failed"
    cancelled: int = 0  # cancelled by the job (DELETE) on Ctrl+C or a run-stopping error
    completed: int = 0
    polls: int = 0
    downloads: int = 0
    download_retries: int = 0  # downloads that broke and were fetched again from scratch
    unknown_lines: int = 0  # output lines for a custom_id never submitted (logged, never matched to a row)
    billed_tokens: int = 0  # the batches' usage
    wait_s: float = 0.0  # seconds from submit to the end of processing, summed over completed batches
    queued_s: float = 0.0  # of which before the job first saw it processing (by its polls), summed
    processing_s: float = 0.0  # of which from then on, summed

    def line(self) -> str:
        """One line for people (status, the report page)."""
        gone = f" ({self.gone:,} unknown to the API)" if self.gone else ""
        gone += f", {self.unrecorded:,} submit(s) of a killed run never recorded" if self.unrecorded else ""
        n = self.completed
        avg = (f", {self.wait_s / n:,.1f} s from submit to done on average ({self.queued_s / n:,.1f} s queued, "
               f"{self.processing_s / n:,.1f} s processing)") if n else ""
        return (f"{self.submitted:,} submitted, {self.resumed:,} resumed, {self.resubmitted:,} resubmitted{gone}, "
                f"{self.failed:,} failed, {self.cancelled:,} cancelled, {self.completed:,} completed{avg}; "
                f"{self.billed_tokens:,} tokens billed; {self.polls:,} polls, {self.downloads:,} downloads "
                f"({self.download_retries:,} again after a break), {self.unknown_lines:,} unknown output lines")

    def add(self, other: "BatchCounts") -> None:
        for name in type(self).model_fields:
            setattr(self, name, getattr(self, name) + getattr(other, name))


class BatchEntry(Record):
    """One batch of a shard: written to ``_batches/NAME.json`` as soon as the API accepted it, before any wait.
    ``positions``: the corpus positions of its inputs in submitted order (``custom_id`` ``request-N`` is
    ``positions[N]``)."""

    part: int  # which slice of the shard's rows (0, 1, ...: inputs_per_batch each)
    attempt: int = 1  # submits of this part so far (1 = the first)
    batch_id: str
    key: str = "key0"  # the key of the pool it belongs to (never the value)
    positions: list[int] = Field(default_factory=list)
    submitted_at: float = 0.0  # epoch s, the job's clock when the API accepted it
    # last seen: submitted | processing | completed | failed | cancelled | gone; "submitting" while the API has not
    # answered the submit yet (no id), "unrecorded" when a rerun found it so (the run died in between)
    status: str = "submitted"
    processing_at: float | None = None  # epoch s, when the job first saw it processing (or ended, if it never did)
    finished_at: float | None = None  # epoch s, when the job saw it end
    error: str | None = None  # why it failed / was cancelled
    cancelled_by_job: bool = False


class ShardBatches(Record):
    """``_batches/NAME.json``: a shard's batches, every attempt, in submit order. A rerun trusts it only for the same
    pieces (``shard_key``) and settings (``fingerprint``)."""

    shard: int
    name: str
    shard_key: str = ""
    fingerprint: str = ""
    batches: list[BatchEntry] = Field(default_factory=list)

    @staticmethod
    def path(name: str) -> str:
        return f"{BATCHES}/{name}.json"

    @classmethod
    def read(cls, out: Storage, name: str) -> "ShardBatches | None":
        data = out.read_json(cls.path(name))
        return None if data is None else cls.model_validate(data)

    def write(self, out: Storage) -> None:
        """In one step (a rename, or one object put): a reader sees the old record or the new."""
        out.write_json(self.path(self.name), self.to_json())

    def latest(self, part: int) -> BatchEntry | None:
        return next((b for b in reversed(self.batches) if b.part == part), None)


class Tally(Record):
    """Rows and requests of a shard or of a whole run: ``rows_in == rows_embedded + rows_dead_letter`` once done."""

    KEPT: ClassVar[tuple[str, ...]] = ("rows_dead_letter", "rows_truncated", "rows_reused", "documents",
                                       "documents_split")  # the counts a shard's footer keeps for a rerun

    rows_in: int = 0
    rows_embedded: int = 0
    rows_dead_letter: int = 0
    rows_truncated: int = 0  # kept although over the model's limit by estimate (the API truncated them)
    rows_reused: int = 0  # vectors carried over from output.previous (no request)
    documents: int = 0  # late chunking: documents embedded, each whole in one shard
    documents_split: int = 0  # of them, longer than the model's context: sent as several consecutive windows
    tokens: int = 0  # billed (usage.total_tokens)
    requests: int = 0  # HTTP attempts, retries included
    retries: int = 0
    http_429: int = 0
    raw_tokens: float = 0.0  # uncalibrated estimate of what was sent: tokens / raw_tokens calibrates the next plan
    batches: BatchCounts | None = None  # batch mode only


class ShardOutcome(Tally):
    """What one shard did and where it ran. A shard task hands it to the driver as an ``embed.result.ShardResult``;
    the run log keeps it as a ``ShardRecord``."""

    shard: int  # the plan's shard index
    name: str | None = None  # shard-NNNNN
    status: Literal["done", "failed", "skipped"] = "done"
    reasons: dict[str, int] = Field(default_factory=dict)  # dead-letter reason -> rows
    node: str | None = None  # the Ray node that ran it
    key: str | None = None  # the key of the pool it used: key0, key1... (never the value)
    seconds: float = 0.0


class ShardRecord(ShardOutcome):
    """One line of ``_progress/``: a shard finished (``done``), ``failed`` or was ``skipped`` as already done."""

    _drop_nulls = True

    run: str = ""  # the run that wrote it (RunLog.run)
    error: str | None = None
    error_type: str | None = None
    shard_key: str | None = None  # the plan's key of the shard's pieces: resume trusts only a matching record
    fingerprint: str | None = None  # the config fingerprint it was made under
    started: float | None = None  # epoch seconds
    finished: float | None = None
    lane: int | None = None  # the worker slot it ran in (the page's timeline)


class Sample(Counters):
    """One line of ``_timeseries/``: the run's cumulative counters at ``t`` (and each key's, with a pool)."""

    _drop_nulls = True

    run: str = ""
    t: float
    elapsed: float = 0.0
    workers: int = 0  # shard tasks running
    shards_done: int = 0
    shards_failed: int = 0
    keys: dict[str, Counters] | None = None  # only with a pool: one key's counters are the run's


class Limits(Record):
    """A key's ``[limits]``: requests and tokens per minute, concurrent requests."""

    rpm: int = 0
    tpm: int = 0
    concurrency: int = 0


class PlanEstimate(Record):
    """The plan's estimate for the shards to do (``embed.estimate.Estimate``: these fields are read back, the
    others kept as they are)."""

    model_config = ConfigDict(extra="allow")

    tokens: int = 0
    seconds: float | None = None


class PlanSummary(Record):
    """The plan as the manifest shows it: files, shards, rows, shards to do, the estimate."""

    files: int = 0
    shards_total: int = 0
    rows_total: int = 0
    shards_todo: int = 0
    estimate: PlanEstimate | None = None


class RunMeta(Record):
    """What the driver tells the run log about the run before it starts (kept in the manifest)."""

    fingerprint: str | None = None
    embedding: dict[str, Any] | None = None  # Config.embedding_key()
    limits: Limits = Field(default_factory=Limits)  # each key's
    keys: list[str] = Field(default_factory=list)  # key0, key1...
    workers: int | None = None
    price_per_million_tokens: float | None = None
    plan: PlanSummary = Field(default_factory=PlanSummary)


class ShardCounts(Record):
    """Shards of the run by state."""

    total: int = 0
    done: int = 0
    skipped: int = 0
    running: int = 0
    failed: int = 0
    pending: int = 0


class RowCounts(Record):
    """Rows of the run: ``in_`` / ``embedded`` / ``dead_letter`` of finished and skipped shards; ``processed`` by
    this run's tasks so far (the coordinator's count), ``so_far`` with the skipped ones."""

    total: int = 0
    skipped: int = 0
    processed: int = 0
    so_far: int = 0
    in_: int = Field(0, alias="in")
    embedded: int = 0
    dead_letter: int = 0


class Rates(Record):
    """Per-minute rates over the recent window of samples (all 0 before two samples)."""

    window_s: float = 0.0
    tokens_per_min: float = 0.0
    requests_per_min: float = 0.0
    rows_per_s: float = 0.0
    http_429_per_min: float = 0.0


class RunningShard(Record):
    """A shard task running now: which shard, on which node, since when."""

    shard: int
    name: str | None = None
    node: str | None = None
    since: str = ""  # ISO time it started


class Failure(Record):
    """A failed shard in the manifest: its name and (the start of) its error."""

    shard: str | int  # its name (its index when it has none)
    error: str


class ReportSummary(Tally):
    """The headline of ``_report.json`` (``EmbedReport`` is this and the rest), kept in the final manifest."""

    duration_s: float = 0.0
    tokens_per_min: float = 0.0
    utilization: float = 0.0  # of the binding limit, over the embed window
    binding_limit: str = "tpm"
    finished: bool = False


class Manifest(RunMeta):
    """``_manifest.json``: the snapshot people and tools read (its size does not grow with the shard count)."""

    format: int = 1
    state: str = "unknown"  # running | finished | failed
    run: str = ""
    started_at: str = ""
    updated_at: str = ""
    updated_ts: float | None = None
    elapsed_s: float = 0.0
    shards: ShardCounts = Field(default_factory=ShardCounts)
    rows: RowCounts = Field(default_factory=RowCounts)
    tokens: int = 0
    requests: int = 0
    http_429: int = 0
    retries: int = 0
    per_key: dict[str, Counters] = Field(default_factory=dict)
    workers_active: int = 0
    rate: Rates = Field(default_factory=Rates)
    running: list[RunningShard] = Field(default_factory=list)
    failures: list[Failure] = Field(default_factory=list)  # the last few
    logs: dict[str, str] = Field(default_factory=dict)  # where the logs are, and their format
    report: ReportSummary | None = None  # once finished

    @classmethod
    def read(cls, out: Storage) -> "Manifest | None":
        """The manifest under ``out`` (None if there is none)."""
        data = out.read_json(MANIFEST)
        return None if data is None else cls.model_validate(data)


def read_progress(out: Storage, run: str | None = None) -> list[ShardRecord]:
    """Shard records in write order (of one run if ``run`` is given)."""
    return [r for r in map(ShardRecord.model_validate, ChunkLog.read(out, PROGRESS)) if run is None or r.run == run]


def read_batches(out: Storage, limit: int | None = None) -> list[ShardBatches]:
    """Batch mode: the batch records under ``_batches/`` (the first ``limit`` shards' at most), in shard order."""
    files = out.list(BATCHES, recursive=False, pattern="*.json")[:limit]
    recs = [ShardBatches.read(out, f.path.rsplit("/", 1)[-1].removesuffix(".json")) for f in files]
    return [r for r in recs if r is not None]


def read_timeseries(out: Storage, run: str | None = None) -> list[Sample]:
    """Samples in time order (of one run if ``run`` is given)."""
    return [s for s in map(Sample.model_validate, ChunkLog.read(out, TIMESERIES)) if run is None or s.run == run]


# -- chains of refreshes (embed.chain) and what a collection holds (load.ledger) --------------------------------

class OutputRef(Record):
    """An embed output as a member of a chain: where it is and the id it was given when it finished."""

    uri: str
    id: str


class ChainRecord(Record):
    """``_chain.json``: what a finished embed output is in a chain of refreshes (``embed.chain``).

    A *full* output holds every row; a *delta* holds the new and changed rows of a refresh (its shards), the ids
    deleted since the output it is a delta of (``_delta/deleted.parquet``) and, for a rollback, where each changed
    or deleted id's previous row is in the chain (``_delta/prior.parquet``). ``state`` names the rows the chain
    stands for once resolved (latest wins per id): the output's own id, except for a delta that changed nothing
    and for a compaction, which stand for the state they equal."""

    format: int = 1
    kind: Literal["full", "delta"] = "full"
    id: str
    state: str
    of_output: OutputRef | None = None  # the output this one is a delta of
    of_state: str | None = None  # the state of that output (what a collection must hold to apply this in place)
    members: list[OutputRef] = Field(default_factory=list)  # base first, this output last
    compacted_from: OutputRef | None = None  # a compaction: the head of the chain it folds
    embedding: dict[str, Any] = Field(default_factory=dict)
    rows: int = 0  # rows of the resolved state
    rows_before: int = 0  # rows of the state it is a delta of
    reused: int = 0
    new: int = 0
    changed: int = 0
    deleted: int = 0
    rows_written: int = 0  # rows in this output's shard files
    bytes_written: int = 0  # shard, dead-letter and _delta files of this output

    @property
    def base(self) -> OutputRef:
        return self.members[0]

    @property
    def chain_length(self) -> int:
        return len(self.members)


class AppliedDelta(Record):
    """A delta applied in place to a collection: enough to undo it (``load.inplace``)."""

    uri: str
    id: str
    state: str
    of_state: str
    rows_before: int
    rows: int
    new: int = 0
    changed: int = 0
    deleted: int = 0


class PendingOp(Record):
    """An in-place apply or undo that started and has not been verified yet (a rerun finishes it)."""

    op: Literal["apply", "undo"]
    delta: AppliedDelta


class LedgerEntry(Record):
    """What one physical collection holds (``load.ledger``): the state of a chain, its rows, the deltas applied to it
    in place since it was loaded whole (oldest first), and an apply or undo under way."""

    physical: str
    state: str
    rows: int
    source: str = ""  # the output it was loaded from, or the last delta applied
    applied: list[AppliedDelta] = Field(default_factory=list)
    pending: PendingOp | None = None

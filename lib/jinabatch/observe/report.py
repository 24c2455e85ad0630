"""The reports a run leaves: the embed stage's ``_report.json`` (``EmbedReport``: counts that reconcile, rates
against the key's budget) and the load stage's ``_load_report.json`` (``LoadReport``), typed records
(``jinabatch.observe.records``) written by their stage and read by status and ``_report.html``."""
from __future__ import annotations

from typing import Any

from pydantic import Field

from ..storage import Storage
from .records import AppliedDelta, ChainRecord, KeyCounters, Limits, Record, ReportSummary, ShardOutcome

__all__ = ["EmbedReport", "LoadReport", "ShardFailure", "Phase", "ImportPoint", "utilization", "REPORT",
           "LOAD_REPORT"]

REPORT, LOAD_REPORT = "_report.json", "_load_report.json"


def utilization(tokens: int, requests: int, seconds: float, *, tpm: int, rpm: int) -> tuple[float, str]:
    """Share of the binding limit used over ``seconds``: (max of TPM and RPM shares, which one)."""
    if seconds <= 0:
        return 0.0, "tpm"
    t = tokens / seconds * 60 / tpm
    r = requests / seconds * 60 / rpm
    return (t, "tpm") if t >= r else (r, "rpm")


class ShardFailure(Record):
    """A failed shard in the report: its name, where its first piece starts, and the error."""

    shard: str
    file: str
    row: int
    error_type: str | None = None
    error: str | None = None


class EmbedReport(ReportSummary):
    """``_report.json``: what the embed run did, as a whole and per key; ``rows_in`` is the corpus's rows; the
    tokens and requests are what the keys were billed (dead attempts and the endpoint check included)."""

    incremental: dict[str, Any] | None = None  # with output.previous: previous, reused, changed, new, dropped, note
    rows_written: int | None = None  # rows in the shard files (a delta's new and changed rows); None: rows_embedded
    chain: ChainRecord | None = None  # what this output is in a chain of refreshes (kind, counts, bytes written)
    dead_letter_reasons: dict[str, int] = Field(default_factory=dict)
    shards_total: int = 0
    shards_skipped: int = 0
    shards_done: int = 0
    shards_failed: int = 0
    failures: list[ShardFailure] = Field(default_factory=list)
    shards_by_node: dict[str, int] = Field(default_factory=dict)  # Ray node id -> shards it embedded
    token_ratio: float | None = None  # tokens / raw_tokens: what the next plan's estimate is calibrated with
    embed_window_s: float = 0.0
    plan_s: float = 0.0  # planning: listing, footers, duplicate pass, the join against output.previous
    requests_per_min: float = 0.0
    limits: Limits = Field(default_factory=Limits)  # each key's
    keys: dict[str, KeyCounters] = Field(default_factory=dict)  # key0, key1...: counters, utilization
    workers: int = 0
    model: str = ""
    task: str | None = None
    dimensions: int = 0
    embedding_type: str = ""
    embedding: dict[str, Any] = Field(default_factory=dict)  # the embedding key (config.embedding_key())
    id_column: str = "id"
    columns: list[str] = Field(default_factory=list)
    fingerprint: str = ""
    output: str = ""

    @classmethod
    def read(cls, out: Storage) -> "EmbedReport | None":
        """The report under ``out`` (None if there is none)."""
        data = out.read_json(REPORT)
        return None if data is None else cls.model_validate(data)

    def add_rows(self, rows_in: int, embedded: int, dead: int, reasons: dict[str, int], truncated: int = 0) -> None:
        """Count a shard's rows (and dead-letter reasons) into the totals."""
        self.rows_in += rows_in
        self.rows_embedded += embedded
        self.rows_dead_letter += dead
        self.rows_truncated += truncated
        for k, v in reasons.items():
            self.dead_letter_reasons[k] = self.dead_letter_reasons.get(k, 0) + v

    def add_shard(self, r: ShardOutcome) -> None:
        """Count a finished (or skipped) shard into the totals: its rows, dead-letter reasons and the counts its
        footer keeps (reused rows, late-chunking documents)."""
        self.add_rows(r.rows_in, r.rows_embedded, r.rows_dead_letter, r.reasons, r.rows_truncated)
        for k in ("rows_reused", "documents", "documents_split"):
            setattr(self, k, getattr(self, k) + getattr(r, k))

    def add_keys(self, per_key: dict[str, dict[str, Any]], *, probe: list[dict[str, int]] | None = None) -> None:
        """Counters per key of the pool (``key0``, ``key1``…), plus what checking each key before the run
        cost (one tiny request each), which is added to the totals too: the report matches the bill."""
        self.keys = {k: KeyCounters.of(c) for k, c in per_key.items()}
        for i, p in enumerate(probe or []):
            c = self.keys.setdefault(f"key{i}", KeyCounters())
            c.tokens += p["tokens"]
            c.requests += p["requests"]
            self.tokens += p["tokens"]
            self.requests += p["requests"]

    def finish_rates(self, window_s: float, *, tpm: int, rpm: int) -> None:
        """Rates per minute and utilization over the embed window of ``window_s`` seconds, in all and per key; the
        token ratio."""
        if self.raw_tokens > 0 and self.tokens > 0:
            self.token_ratio = round(self.tokens / self.raw_tokens, 4)
        self.embed_window_s = round(window_s, 3)
        if window_s > 0:
            self.tokens_per_min = round(self.tokens / window_s * 60, 1)
            self.requests_per_min = round(self.requests / window_s * 60, 2)
        u, which = utilization(self.tokens, self.requests, window_s, tpm=tpm, rpm=rpm)
        self.utilization, self.binding_limit = round(u, 4), which
        for c in self.keys.values():  # [limits] is each key's budget
            u, which = utilization(c.tokens, c.requests, window_s, tpm=tpm, rpm=rpm)
            c.utilization, c.binding_limit = round(u, 4), which

    @property
    def rows_in_shards(self) -> int:
        """Rows the shard files hold: every embedded row, or a delta's new and changed ones."""
        return self.rows_embedded if self.rows_written is None else self.rows_written

    @property
    def reconciled(self) -> bool:
        return self.rows_in == self.rows_embedded + self.rows_dead_letter

    def write(self, out: Storage) -> str:
        """Write ``_report.json`` under ``out``; returns its URI."""
        out.write_json(REPORT, self.to_json())
        return out.uri_of(REPORT)

    def summary(self) -> str:
        """One line for people: rows, shards, tokens, requests, utilization, time."""
        inc = self.incremental
        reuse = ""
        if inc:
            reuse = (f" (incremental from {inc['previous']}: {inc['reused']} reused, {inc['changed']} changed, "
                     f"{inc['new']} new, {inc['dropped']} dropped{'; ' + inc['note'] if inc.get('note') else ''})")
        ch = self.chain
        if ch is not None and ch.kind == "delta":
            reuse += (f"; delta of {ch.of_output.uri if ch.of_output else '?'} (chain of {ch.chain_length}): {ch.rows_written} rows "
                      f"written, {ch.deleted} deleted, {ch.bytes_written} bytes"
                      + ("; nothing changed" if ch.state == ch.of_state else ""))
        return (f"{self.rows_embedded}/{self.rows_in} rows embedded{reuse}, {self.rows_dead_letter} dead-lettered, "
                f"{self.shards_done} shards done, {self.shards_skipped} skipped, {self.shards_failed} failed; "
                + (f"{self.documents} documents ({self.documents_split} longer than the context, sent as several "
                   "windows); " if self.documents else "")
                + f"{self.tokens} tokens in {self.requests} requests ({self.http_429} answered 429); "
                + (f"batches: {self.batches.line()}; " if self.batches is not None else "")
                + self._rate()
                + f"; {self.duration_s:.1f}s")

    def _rate(self) -> str:
        if self.batches is not None:  # the batch endpoint bills tokens but does not spend the key's TPM
            return f"{self.tokens_per_min:.0f} tokens/min through batches (not against the key's TPM)"
        return (f"{self.tokens_per_min:.0f} tokens/min = {self.utilization:.1%} of {self.binding_limit.upper()}"
                + (" (per key: " + ", ".join(f"{k} {c.utilization:.1%}, {c.http_429} 429s"
                                            for k, c in self.keys.items()) + ")" if len(self.keys) > 1 else ""))


class Phase(Record):
    """A step of the load and its seconds."""

    phase: str  # create, copy files, fill, flush + index, load, verify, alias switch, remove copies, tidy
    seconds: float


class ImportPoint(Record):
    """Rows loaded ``t`` seconds into the fill."""

    t: float  # seconds into the fill
    rows: int  # rows that import task (or upsert batches of that second) added


class LoadReport(Record):
    """``_load_report.json``: where the alias points after the load (or a rollback), and how it got there."""

    collection: str  # the alias users query
    physical: str  # the collection it now points at
    rows: int
    mode: str  # "bulk" | "insert" | "rollback" | "upsert" (a delta applied in place)
    how: str = "new collection"  # "new collection" | "in place" | "unchanged" (a delta that changed nothing) |
    # "alias moved back" (the rollback of a whole load)
    rows_sent: int = 0  # rows written to Milvus (imported, inserted or upserted)
    rows_deleted: int = 0  # ids deleted in place
    state: str = ""  # the chain state the collection holds now (load.ledger)
    delta: AppliedDelta | None = None  # the delta applied (or undone) in place
    seconds: float
    previous: str | None  # where the alias pointed before
    dropped: list[str] = Field(default_factory=list)
    uri: str = ""
    verified_ids: int = 0
    verify_seed: int | None = None  # the seed of the sampled ids (load.verify), to replay the check
    server: str = ""  # e.g. "Milvus v2.3.5-lite (no nullable fields)"
    carried: dict[str, str] = Field(default_factory=dict)  # column -> how it is held ("nullable field", ...)
    phases: list[Phase] = Field(default_factory=list)  # each step's seconds, in order
    imports: list[ImportPoint] = Field(default_factory=list)  # rows loaded over time
    # bulk import: where the server read the files ("read_from", "placement") and, when copies were made for
    # it, {"files", "how", "seconds", "removed"} under "copies" (jinabatch.load.importfiles.ImportFiles.describe)
    import_files: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def read(cls, out: Storage) -> "LoadReport | None":
        """The load report under ``out`` (None if the load has not run)."""
        data = out.read_json(LOAD_REPORT)
        return None if data is None else cls.model_validate(data)

    def write(self, out: Storage) -> None:
        """Write ``_load_report.json`` under ``out``."""
        out.write_json(LOAD_REPORT, self.to_json())

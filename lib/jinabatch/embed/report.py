"""The embed stage's ``_report.json``: counts that reconcile and rates against the key's budget."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..storage import Storage

__all__ = ["EmbedReport", "utilization"]


def utilization(tokens: int, requests: int, seconds: float, *, tpm: int, rpm: int) -> tuple[float, str]:
    """Share of the binding limit used over ``seconds``: (max of TPM and RPM shares, which one)."""
    if seconds <= 0:
        return 0.0, "tpm"
    t = tokens / seconds * 60 / tpm
    r = requests / seconds * 60 / rpm
    return (t, "tpm") if t >= r else (r, "rpm")


@dataclass
class EmbedReport:
    rows_in: int = 0
    rows_embedded: int = 0
    rows_dead_letter: int = 0
    rows_truncated: int = 0
    rows_reused: int = 0  # vectors carried over from output.previous instead of sent
    incremental: dict[str, Any] | None = None  # with output.previous: previous, reused, changed, new, dropped, note
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    documents: int = 0  # late chunking: documents embedded (each whole in one shard)
    documents_split: int = 0  # of them, longer than the model's context: sent as several consecutive windows
    shards_total: int = 0
    shards_skipped: int = 0
    shards_done: int = 0
    shards_failed: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    shards_by_node: dict[str, int] = field(default_factory=dict)  # Ray node id -> shards it embedded
    tokens: int = 0
    raw_tokens: float = 0.0  # the uncalibrated estimate (UTF-8 bytes / 4 + 2 per row) of the rows sent
    token_ratio: float | None = None  # tokens / raw_tokens: what the next plan's estimate is calibrated with
    requests: int = 0
    retries: int = 0
    http_429: int = 0
    duration_s: float = 0.0
    embed_window_s: float = 0.0
    tokens_per_min: float = 0.0
    requests_per_min: float = 0.0
    utilization: float = 0.0
    binding_limit: str = "tpm"
    limits: dict[str, Any] = field(default_factory=dict)
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)  # key0, key1...: counters, utilization
    workers: int = 0
    model: str = ""
    task: str | None = None
    dimensions: int = 0
    embedding_type: str = ""
    embedding: dict[str, Any] = field(default_factory=dict)  # the embedding key (config.embedding_key())
    id_column: str = "id"
    columns: list[str] = field(default_factory=list)
    fingerprint: str = ""
    output: str = ""
    finished: bool = False

    def add_rows(self, rows_in: int, embedded: int, dead: int, reasons: dict[str, int], truncated: int = 0) -> None:
        self.rows_in += rows_in
        self.rows_embedded += embedded
        self.rows_dead_letter += dead
        self.rows_truncated += truncated
        for k, v in reasons.items():
            self.dead_letter_reasons[k] = self.dead_letter_reasons.get(k, 0) + v

    def add_documents(self, counts: dict[str, Any]) -> dict[str, int]:
        """Fold one shard's late-chunking counts (a result, footer or run-log record) in; returns them."""
        got = {k: int(counts.get(k, 0)) for k in ("documents", "documents_split")}
        self.documents += got["documents"]
        self.documents_split += got["documents_split"]
        return got

    def add_keys(self, per_key: dict[str, dict[str, Any]], *, probe: list[dict[str, int]] | None = None) -> None:
        """Counters per key of the pool (``key0``, ``key1``…), plus what checking each key before the run
        cost (one tiny request each), which is added to the totals too: the report matches the bill."""
        self.keys = {k: dict(c) for k, c in per_key.items()}
        for i, p in enumerate(probe or []):
            c = self.keys.setdefault(f"key{i}", {"rows": 0, "tokens": 0, "requests": 0, "http_429": 0, "retries": 0})
            c["tokens"] += p["tokens"]
            c["requests"] += p["requests"]
            self.tokens += p["tokens"]
            self.requests += p["requests"]

    def finish_rates(self, window_s: float, *, tpm: int, rpm: int) -> None:
        if self.raw_tokens > 0 and self.tokens > 0:
            self.token_ratio = round(self.tokens / self.raw_tokens, 4)
        self.embed_window_s = round(window_s, 3)
        if window_s > 0:
            self.tokens_per_min = round(self.tokens / window_s * 60, 1)
            self.requests_per_min = round(self.requests / window_s * 60, 2)
        u, which = utilization(self.tokens, self.requests, window_s, tpm=tpm, rpm=rpm)
        self.utilization, self.binding_limit = round(u, 4), which
        for c in self.keys.values():  # [limits] is each key's budget
            u, which = utilization(c["tokens"], c["requests"], window_s, tpm=tpm, rpm=rpm)
            c["utilization"], c["binding_limit"] = round(u, 4), which

    @property
    def reconciled(self) -> bool:
        return self.rows_in == self.rows_embedded + self.rows_dead_letter

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, out: Storage) -> str:
        out.write_json("_report.json", self.to_dict())
        return out.uri_of("_report.json")

    def summary(self) -> str:
        inc = self.incremental
        reuse = ""
        if inc:
            reuse = (f" (incremental from {inc['previous']}: {inc['reused']} reused, {inc['changed']} changed, "
                     f"{inc['new']} new, {inc['dropped']} dropped{'; ' + inc['note'] if inc.get('note') else ''})")
        return (f"{self.rows_embedded}/{self.rows_in} rows embedded{reuse}, {self.rows_dead_letter} dead-lettered, "
                f"{self.shards_done} shards done, {self.shards_skipped} skipped, {self.shards_failed} failed; "
                + (f"{self.documents} documents ({self.documents_split} longer than the context, sent as several "
                   "windows); " if self.documents else "")
                + f"{self.tokens} tokens in {self.requests} requests ({self.http_429} answered 429); "
                f"{self.tokens_per_min:.0f} tokens/min = {self.utilization:.1%} of {self.binding_limit.upper()}"
                + (" (per key: " + ", ".join(f"{k} {c.get('utilization', 0):.1%}, {c['http_429']} 429s"
                                            for k, c in self.keys.items()) + ")" if len(self.keys) > 1 else "")
                + f"; {self.duration_s:.1f}s")

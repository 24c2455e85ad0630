"""What a run will cost before it costs anything: rows, tokens, requests, time under the limits, money.

Nothing here calls the API. Tokens are ``raw × ratio``: *raw* is the uncalibrated estimate the client packs
with (UTF-8 bytes / 4 plus 2 per row), measured on a sample of the corpus — up to ``SAMPLE_GROUPS`` row
groups spread evenly over it, at most ``SAMPLE_ROWS_PER_GROUP`` rows of each — and scaled to the rows left
to embed; the *ratio* (tokens the server bills per raw token) comes from, in order of trust:

1. ``local model``: with ``jina.base_url = "local"`` the stand-in's tokenizer is known, so the sample is
   counted exactly;
2. ``previous run``: ``token_ratio`` in this output's (or ``output.previous``'s) ``_report.json`` — what the
   server billed per raw token last time, for the same model;
3. ``prior``: the client's pessimistic starting ratio (1.15), with a note that the first run calibrates it.

Requests follow how the worker packs them: per record batch of ``READ_BATCH_ROWS`` rows, requests of at most
the request token budget (``embed.task.request_token_budget``) and the model's input cap. Time is the larger
of tokens ÷ TPM and requests ÷ RPM at ``limits.target``, times the number of keys, plus start-up.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..config import LOCAL_BASE_URL, Config
from ..jina.tokens import BYTES_PER_TOKEN, SPECIAL_TOKENS, TokenEstimator
from ..observe.report import EmbedReport
from ..storage import Storage
from .plan import Plan, Shard
from .rows import READ_BATCH_ROWS
from .task import request_token_budget

__all__ = ["Estimate", "estimate_run", "STARTUP_SECONDS"]

SAMPLE_GROUPS = 64
SAMPLE_ROWS_PER_GROUP = 256  # 64 × 256 rows: a mean tokens per row within ~1%, counted in ~0.1 s
STARTUP_SECONDS = 8.0  # Ray start, the first shard's plan and ramp-up (measured here: 5-9 s)


@dataclass
class Estimate:
    """What the shards left to do will cost: rows, tokens, requests, seconds under the limits, money."""

    rows: int  # rows left to send (in unfinished shards, less those carried over from output.previous)
    shards: int
    tokens: int
    requests: int
    seconds: float
    binding_limit: str  # "tpm" | "rpm"
    tokens_per_row: float
    ratio: float
    ratio_source: str  # "local model" | "previous run" | "prior"
    sample_rows: int
    keys: int
    cost: float | None = None  # at jina.price_per_million_tokens

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sample(plan: Plan, text_column: str, settings) -> list[str]:
    groups = [(f, i) for f in plan.files for i in range(len(f.row_groups))]
    if not groups:
        return []
    picks = sorted(set(np.linspace(0, len(groups) - 1, num=min(SAMPLE_GROUPS, len(groups))).round().astype(int)))
    texts: list[str] = []
    for k in picks:
        f, rg = groups[k]
        parent, _, name = f.uri.rpartition("/")
        pf = pq.ParquetFile(Storage.open(parent or "/", settings).open_input_file(name))
        batch = next(pf.iter_batches(batch_size=SAMPLE_ROWS_PER_GROUP, row_groups=[rg], columns=[text_column]), None)
        if batch is not None:
            col = batch.column(0)
            texts += [t for t in col.to_pylist() if t and t.strip()]
    return texts


def _ratio(config: Config, out: Storage, texts: list[str], raw: float) -> tuple[float, str]:
    if config.jina.base_url.rstrip("/") == LOCAL_BASE_URL and texts:
        from ..runtime import local_token_count

        return local_token_count(texts) / raw, "local model"
    sources = [out]
    prev = config.output.previous
    if prev:
        sources.append(Storage.open(prev, config.storage))
    for src in sources:
        rep = EmbedReport.read(src)
        if rep is not None and rep.token_ratio and rep.model == config.jina.model:
            return rep.token_ratio, "previous run"
    return TokenEstimator().ratio, "prior"


def _requests(shards: list[Shard], tokens_per_row: float, budget: int, max_inputs: int) -> int:
    """Requests the worker sends: each piece is read in record batches packed into requests."""

    def per_batch(n: int) -> int:
        return max(math.ceil(n / max_inputs), math.ceil(n * tokens_per_row / budget)) if n else 0

    full = per_batch(READ_BATCH_ROWS)
    total = 0
    for s in shards:
        for n in [p.rows for p in s.pieces] or [s.rows]:  # a delta's shard is read as one run of rows
            q, r = divmod(n, READ_BATCH_ROWS)
            total += q * full + per_batch(r)
    return total


def estimate_run(config: Config, plan: Plan, out: Storage, todo: list[Shard]) -> Estimate:
    """The estimate for embedding ``todo`` (the plan's unfinished shards)."""
    texts = _sample(plan, config.corpus.text_column, config.storage)
    raw_per_row = (float(np.mean(pc.binary_length(pa.array(texts, pa.string())).to_numpy()) / BYTES_PER_TOKEN + SPECIAL_TOKENS)
                   if texts else 0.0)
    ratio, source = _ratio(config, out, texts, raw_per_row * len(texts)) if texts else (TokenEstimator().ratio, "prior")
    tokens_per_row = raw_per_row * ratio
    rows = sum(s.rows for s in todo)
    reuse = plan.reuse
    if reuse and reuse.reused and not reuse.sparse:  # carried-over rows cost nothing: only new and changed ones
        # are sent (a delta's shards hold no other rows: nothing to scale)
        rows = int(round(rows * (reuse.changed + reuse.new) / max(1, reuse.reused + reuse.changed + reuse.new)))
    tokens = int(round(rows * tokens_per_row))
    requests = _requests(todo, max(tokens_per_row, 1e-9), request_token_budget(config), config.jina.max_inputs)
    keys = len(config.jina.api_key_env)
    lim = config.limits
    t_tokens = tokens / (lim.tpm * lim.target * keys) * 60
    t_requests = requests / (lim.rpm * lim.target * keys) * 60
    seconds = (max(t_tokens, t_requests) + STARTUP_SECONDS) if todo else 0.0
    price = config.jina.price_per_million_tokens
    return Estimate(rows=rows, shards=len(todo), tokens=tokens, requests=requests, seconds=round(seconds, 1),
                    binding_limit="tpm" if t_tokens >= t_requests else "rpm",
                    tokens_per_row=round(tokens_per_row, 3), ratio=round(ratio, 4), ratio_source=source,
                    sample_rows=len(texts), keys=keys,
                    cost=None if price is None else round(tokens / 1e6 * price, 4))


"""``python jobs/plan.py CONFIG``: the whole plan and what it will cost, without calling the API.

The same planner the embed stage uses (``embed.plan``), the same resume check (``embed.resume``), and the
estimate (``embed.estimate``) for what is left. The plan is stored in the output's ``_plan/``, so the embed run
that follows reuses it instead of planning again.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..config import Config
from ..runtime import lazy_ray
from ..storage import Storage
from .estimate import Estimate, estimate_run
from .plan import Plan, plan_corpus
from .resume import find_finished

__all__ = ["Preview", "preview", "format_preview"]


@dataclass
class Preview:
    """What ``jinabatch plan`` shows: the plan's counts, what a rerun skips, the estimate, the incremental counts."""

    corpus: str
    output: str
    files: int
    rows: int
    shards: int
    rows_per_shard: int
    duplicates: int
    shards_done: int  # a rerun skips these
    rows_done: int
    stale: int  # files of an earlier plan the run will delete
    plan_reused: bool
    estimate: Estimate
    incremental: dict[str, Any] | None = None  # reused / changed / new / dropped against output.previous
    limits: dict[str, Any] = field(default_factory=dict)
    price_per_million_tokens: float | None = None
    largest_shard: int = 0  # rows; over rows_per_shard when late chunking extends a shard to finish a document
    batches: int | None = None  # jina.api = "batch": batches a run would submit (at most, before dead letters)
    inputs_per_batch: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def preview(config: Config) -> tuple[Preview, Plan]:
    """Plan the corpus (kept in ``_plan/``) and say what a run of ``config`` would do and cost; returns (that, the
    plan)."""
    out = Storage.open(config.output.path, config.storage)
    out.check("output.path")
    with lazy_ray(config) as need_ray:  # started only if a pass needs it
        plan = plan_corpus(config, out, ray_context=need_ray)
    resume = find_finished(config, plan, out)
    todo = [s for s in plan.shards if s.index not in resume.done]
    lim = config.limits
    est = estimate_run(config, plan, out, todo)
    return Preview(corpus=plan.root, output=out.uri, files=len(plan.files), rows=plan.rows, shards=len(plan.shards),
                   rows_per_shard=config.corpus.rows_per_shard, duplicates=plan.duplicates,
                   shards_done=len(resume.done), rows_done=sum(s.rows for s in plan.shards if s.index in resume.done),
                   stale=len([p for p in resume.stale if p.startswith("shards/")]), plan_reused=plan.reused,
                   estimate=est, incremental=plan.reuse.to_dict() if plan.reuse else None, limits={"rpm": lim.rpm, "tpm": lim.tpm, "concurrency": lim.concurrency,
                                         "target": lim.target},
                   price_per_million_tokens=config.jina.price_per_million_tokens,
                   largest_shard=max((sh.rows for sh in plan.shards), default=0),
                   **_batches(config, todo)), plan


def _batches(config: Config, todo: list) -> dict[str, int]:
    """Batch mode: how many batches the shards to do make (each shard's rows in parts of inputs_per_batch)."""
    if config.jina.api != "batch":
        return {}
    size = config.jina.batch.inputs_per_batch
    return {"batches": sum(-(-s.rows // size) for s in todo), "inputs_per_batch": size}


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def format_preview(p: Preview) -> str:
    """The lines ``jinabatch plan`` prints for ``p``."""
    e = p.estimate
    lines = [
        f"corpus   {p.corpus}: {p.files:,} file(s), {p.rows:,} rows, {p.duplicates:,} duplicate id(s) "
        "(dead-lettered, first occurrence kept)",
        f"shards   {p.shards:,} of {p.rows_per_shard:,} rows"
        + (f" (cut at document ends: the largest has {p.largest_shard:,})" if p.largest_shard > p.rows_per_shard
           else "")
        + f"; {p.shards_done:,} already done in {p.output} ({p.rows_done:,} rows)"
        f" — a run sends the other {e.shards:,}"
        + (f"; {p.stale} stale shard file(s) of an earlier plan will be removed" if p.stale else "")
        + ("; plan reused from _plan/" if p.plan_reused else ""),
        f"tokens   ~{e.tokens:,} for {e.rows:,} rows (~{e.tokens_per_row:.1f}/row; ratio {e.ratio:.3f} from "
        f"{e.ratio_source}, sampled {e.sample_rows:,} rows)",
        f"requests ~{e.requests:,}",
        f"time     ~{_duration(e.seconds)} under {p.limits['tpm']:,} TPM / {p.limits['rpm']:,} RPM "
        f"x {e.keys} key(s) at {p.limits['target']:.1%} ({e.binding_limit.upper()} binds)",
    ]
    if p.batches is not None:  # the Batch Embeddings API: the time is Jina's queue's, not the key's rate
        lines[-2:] = [f"batches  ~{p.batches:,} of at most {p.inputs_per_batch:,} rows (one submit each, plus polls "
                      "and one download)",
                      "time     depends on Jina's batch queue, which Jina does not publish (it suggests polling "
                      "every 10-30 s); use jina.api = \"embeddings\" for results within minutes"]
    if p.incremental:
        i = p.incremental
        lines.insert(2, f"previous {i['previous']}: {i['reused']:,} rows reused, {i['changed']:,} changed, "
                        f"{i['new']:,} new (sent), {i['dropped']:,} dropped" + (f" — {i['note']}" if i["note"] else "")
                        + (f"; written as a delta (chain of {i['chain_length'] + 1}: only new and changed rows and "
                           "the deleted ids, loaded in place; its shards hold only the rows it sends)"
                           if i.get("kind") == "delta" and not i["note"] else ""))
    if e.cost is not None:
        lines.append(f"cost     ~${e.cost:,.2f} at ${p.price_per_million_tokens:g} per million tokens")
    else:
        lines.append("cost     set jina.price_per_million_tokens to see it")
    return "\n".join(lines)

"""Compare the alias's answers with another collection's: what changes for users when search switches model.

``compare(config, other, queries, k)``: for each query, the top-k from the alias ``milvus.collection`` and
the top-k from ``other`` — a physical collection, another alias, or ``"previous"`` (the collection the alias
pointed at before its last load) — each side with the query embedded by *its own* model, dimensions and
query task (``jinabatch.*`` properties, ``jinabatch.load.search.pinned``). Per query: overlap@k and the ids
that moved, read as going from ``other`` to the alias:

* ``entered`` — in the alias's top-k, not in the other's (with its rank in the alias)
* ``left``    — in the other's top-k, not in the alias's (with its rank there)
* ``moved``   — in both, at a different rank (``shift`` > 0: higher in the alias)

overlap@k = |ids in both top-k| / k (divided by the longer list when a collection holds fewer than k rows).
The report's summary: mean and min overlap@k, how many queries kept the same top-k (same ids in the same
order) or the same set, and how many share nothing.

Typical use right after a backfill's load switched the alias: ``other = "previous"``; ``jobs/load.py
--rollback`` if the new answers are worse. Both sides are searched by their physical name; a collection
that was released (the previous one is, after a switch) is loaded for the comparison and released again.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from statistics import mean
from typing import Any

from ..config import Config
from ..errors import ConfigError, LoadError
from ..runtime import jina_endpoint
from .milvus import Target, alias_target, connect, physicals
from .search import Hit, Pinned, cut, embed_queries, loaded, pinned, top_k

__all__ = ["Move", "Comparison", "CompareReport", "compare", "compare_target", "diff_ranks", "format_comparison",
           "PREVIOUS"]

PREVIOUS = "previous"  # --compare previous: the collection the alias pointed at before its last load


@dataclass(frozen=True)
class Move:
    """An id whose place differs between the two top-k lists (ranks from 1; None = not in that top-k)."""

    id: Any
    rank: int | None  # in the alias's top-k
    other_rank: int | None  # in the other collection's top-k

    @property
    def shift(self) -> int:
        """Places gained in the alias (0 when the id is missing from one side)."""
        return self.other_rank - self.rank if self.rank and self.other_rank else 0


@dataclass
class Comparison:
    """One query's top-k from the alias and from the other collection, and how they differ."""

    query: str
    k: int
    hits: list[Hit]  # from the alias
    other_hits: list[Hit]  # from the other collection
    overlap: int  # ids in both top-k lists
    entered: list[Move] = field(default_factory=list)
    left: list[Move] = field(default_factory=list)
    moved: list[Move] = field(default_factory=list)

    @property
    def overlap_at_k(self) -> float:
        """|ids in both top-k| / k (1.0 for two empty lists)."""
        n = max(len(self.hits), len(self.other_hits))
        return self.overlap / n if n else 1.0

    @property
    def identical(self) -> bool:
        """Same ids in the same order."""
        return [h.id for h in self.hits] == [h.id for h in self.other_hits]


@dataclass
class CompareReport:
    """Every query's comparison of the alias with another collection, each pinned to its own model."""

    alias: str
    current: Pinned  # the alias's collection
    other: Pinned
    k: int
    comparisons: list[Comparison]

    @property
    def mean_overlap(self) -> float:
        return mean(c.overlap_at_k for c in self.comparisons) if self.comparisons else 1.0

    def summary(self) -> dict[str, Any]:
        cs = self.comparisons
        return {"queries": len(cs), "k": self.k, "mean_overlap_at_k": round(self.mean_overlap, 4),
                "min_overlap_at_k": round(min((c.overlap_at_k for c in cs), default=1.0), 4),
                "identical": sum(c.identical for c in cs),
                "same_set": sum(c.overlap == len(c.hits) == len(c.other_hits) for c in cs),
                "no_overlap": sum(c.overlap == 0 and bool(c.hits or c.other_hits) for c in cs),
                "entered": sum(len(c.entered) for c in cs), "left": sum(len(c.left) for c in cs),
                "moved": sum(len(c.moved) for c in cs)}

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-ready (what ``jobs/search.py --compare --json`` prints)."""
        def side(p: Pinned) -> dict:
            return {"name": p.name, "collection": p.collection, "model": p.model, "dimensions": p.dimensions,
                    "task": p.task, "rows": p.rows}

        def hits(hs: list[Hit]) -> list[dict]:
            return [{"rank": r, "id": h.id, "score": h.score, "fields": h.fields} for r, h in enumerate(hs, 1)]

        return {"alias": self.alias, "current": side(self.current), "other": side(self.other),
                "summary": self.summary(),
                "queries": [{"query": c.query, "overlap": c.overlap, "overlap_at_k": round(c.overlap_at_k, 4),
                             "identical": c.identical, "hits": hits(c.hits), "other_hits": hits(c.other_hits),
                             **{kind: [asdict(m) | {"shift": m.shift} for m in getattr(c, kind)]
                                for kind in ("entered", "left", "moved")}}
                            for c in self.comparisons]}


def diff_ranks(ids: Sequence[Any], other_ids: Sequence[Any]) -> tuple[int, list[Move], list[Move], list[Move]]:
    """(overlap, entered, left, moved) going from the ranking ``other_ids`` to ``ids`` (each best first)."""
    rank = {i: r for r, i in enumerate(ids, 1)}
    other = {i: r for r, i in enumerate(other_ids, 1)}
    entered = [Move(i, r, None) for i, r in rank.items() if i not in other]
    left = [Move(i, None, r) for i, r in other.items() if i not in rank]
    moved = [Move(i, r, other[i]) for i, r in rank.items() if i in other and other[i] != r]
    return len(rank.keys() & other.keys()), entered, left, moved


def _resolve_other(target: Target, alias: str, current: Pinned, other: str) -> Pinned:
    name = other
    if other == PREVIOUS:
        if not current.previous:
            raise LoadError(f"alias {alias!r} points at {current.collection}, which was its first load: there is no "
                            f"previous collection to compare with; {_candidates(target, alias)}")
        if not target.client.has_collection(current.previous):
            raise LoadError(f"the collection alias {alias!r} pointed at before, {current.previous}, no longer "
                            f"exists (dropped by milvus.keep_previous); {_candidates(target, alias)}")
        other = current.previous
    try:
        pin = pinned(target, other, role="--compare")
    except LoadError as e:
        raise LoadError(f"{e}; {_candidates(target, alias)}") from None
    if name == PREVIOUS:
        pin = replace(pin, name=PREVIOUS)
    if pin.collection == current.collection:
        raise ConfigError(f"--compare {other}: that is {current.collection}, the collection alias {alias!r} points "
                          f"at; nothing to compare — {_candidates(target, alias)}")
    return pin


def _candidates(target: Target, alias: str) -> str:
    """What the user can compare with: the alias's other collections."""
    live = alias_target(target.client, alias)
    names = [p.name for p in reversed(physicals(target.client, alias)) if p.name != live]
    if not names:
        return f"no other collection of alias {alias!r} is kept (milvus.keep_previous)"
    return f"collections of alias {alias!r} besides the live one, newest first: {', '.join(names)}"


def compare_target(target: Target, config: Config, other: str, queries: Sequence[str], k: int = 10) -> CompareReport:
    """``compare`` on an open ``target``."""
    if k < 1:
        raise ConfigError(f"-k must be at least 1; got {k}")
    if not queries:
        raise ConfigError("no queries to compare: give them as arguments or in a file (--queries FILE)")
    alias = config.milvus.collection
    if alias_target(target.client, alias) is None:
        raise LoadError(f"no collection {alias!r} (milvus.collection) in Milvus at {target.uri}; "
                        "run the load first: python jobs/load.py CONFIG")
    current = pinned(target, alias, role="milvus.collection")
    pin = _resolve_other(target, alias, current, other)
    with jina_endpoint(config.jina) as endpoint:  # one local server (if any) for both sides
        vectors = embed_queries(config.jina, current, queries, endpoint)
        other_vectors = embed_queries(config.jina, pin, queries, endpoint)
    with loaded(target.client, current.collection):
        hits = top_k(target, current, vectors, k)
    with loaded(target.client, pin.collection, restore=True):
        other_hits = top_k(target, pin, other_vectors, k)
    out = []
    for q, a, b in zip(queries, hits, other_hits):
        overlap, entered, left, moved = diff_ranks([h.id for h in a], [h.id for h in b])
        out.append(Comparison(q, k, a, b, overlap, entered, left, moved))
    return CompareReport(alias, current, pin, k, out)


def compare(config: Config, other: str, queries: Sequence[str], k: int = 10) -> CompareReport:
    """Top-k of each query from the alias and from ``other`` (a collection, an alias or ``"previous"``), each
    embedded with its own model; overlap@k and moved ids per query (server started if embedded)."""
    with connect(config.milvus, config.storage) as target:
        return compare_target(target, config, other, queries, k)


def format_comparison(report: CompareReport, text_column: str | None = "text", width: int = 60) -> str:
    """The report for a terminal: a header naming both sides, the summary, then per query the two top-k lists
    side by side (``+2``: two places higher in the alias than in the other, ``new``: not in the other's top-k,
    ``out``: not in the alias's) and the ids that entered and left, with their ``text_column`` if carried."""
    cur, oth, s, k = report.current, report.other, report.summary(), report.k
    lines = [f"alias {report.alias!r}: {cur.collection} ({cur.describe()})",
             (f"other {oth.name!r}: " if oth.name != oth.collection else "other: ")
             + f"{oth.collection} ({oth.describe()})",
             f"{s['queries']} queries, k = {k}: mean overlap@{k} {s['mean_overlap_at_k']:.2f} "
             f"(min {s['min_overlap_at_k']:.2f}); top-{k} identical for {s['identical']}, same ids in any "
             f"order for {s['same_set']}, nothing in common for {s['no_overlap']}",
             f"going from other to alias: {s['entered']} ids entered a top-{k}, {s['left']} left one, "
             f"{s['moved']} changed rank",
             "change: +n = n places higher in the alias than in other, new = not in other's top-k; "
             "out = not in the alias's top-k"]
    id_w = max([len(str(h.id)) for c in report.comparisons for h in (*c.hits, *c.other_hits)] + [8])
    for n, c in enumerate(report.comparisons, 1):
        lines += ["", *_query_block(n, c, id_w, text_column, width)]
    return "\n".join(lines)


def _query_block(n: int, c: Comparison, id_w: int, text_column: str | None, width: int) -> list[str]:
    depth = max(len(c.hits), len(c.other_hits))
    lines = [f"query {n}: {cut(c.query, 80)}  overlap@{c.k} {c.overlap}/{depth} = {c.overlap_at_k:.2f}",
             f"  rank  {'alias':<{id_w}}   score  change  {'other':<{id_w}}   score"]
    in_other = {h.id: r for r, h in enumerate(c.other_hits, 1)}
    in_alias = {h.id: r for r, h in enumerate(c.hits, 1)}
    for r in range(1, depth + 1):
        a = c.hits[r - 1] if r <= len(c.hits) else None
        b = c.other_hits[r - 1] if r <= len(c.other_hits) else None
        if a is None:
            change = ""
        elif a.id not in in_other:
            change = "new"
        else:
            change = "=" if in_other[a.id] == r else f"{in_other[a.id] - r:+d}"
        left = f"{a.id!s:<{id_w}} {a.score:7.4f}" if a else " " * (id_w + 8)
        right = f"{b.id!s:<{id_w}} {b.score:7.4f}{'  out' if b.id not in in_alias else ''}" if b else ""
        lines.append(f"  {r:>4}  {left}  {change:>6}  {right}".rstrip())
    text = {h.id: h.fields.get(text_column) for h in (*c.hits, *c.other_hits)} if text_column else {}
    for m in c.entered:
        lines.append(f"  entered  {m.id!s} (rank {m.rank})" + _text(text.get(m.id), width))
    for m in c.left:
        lines.append(f"  left     {m.id!s} (was {m.other_rank})" + _text(text.get(m.id), width))
    return lines


def _text(value: Any, width: int) -> str:
    return "" if value is None else f": {cut(value, width)}"

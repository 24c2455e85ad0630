"""Search the alias: top-k rows for each query, embedded with the collection's own model, dimensions and query
task — through the bundled local Jina-compatible server when jina.base_url = "local" — with rank, score, id and
the carried columns.

    jinabatch search CONFIG "q" ["q2" ...] [--queries FILE] [-k 5] [--json]
    jinabatch search CONFIG --compare OTHER "q1" "q2" ... [--queries FILE] [-k 10] [--json]

``--compare OTHER`` puts the alias's top-k next to the top-k of OTHER — a physical collection, another alias, or
``previous`` (the collection the alias pointed at before its last load) — each side embedding the query with its
own model: overlap@k per query and on average, and the ids that entered, left or moved going from OTHER to the
alias. What to look at before keeping a model switch (``jinabatch load CONFIG --rollback`` undoes it).
``--queries FILE`` reads one query per line (blank lines skipped).

With milvus.uri = "embedded" it uses a running embedded server (jinabatch load CONFIG --serve) or starts one.
Exit code 0, or 1 with a one-line reason.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from ..errors import ConfigError
from .common import add_config, config_of, parser, run_main, setup_logging

__all__ = ["main", "read_queries"]


def read_queries(args: argparse.Namespace) -> list[str]:
    """The queries given as arguments, then those of ``--queries FILE``; ConfigError if there are none."""
    queries = list(args.query)
    if args.queries:
        try:
            text = Path(args.queries).read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"--queries {args.queries}: cannot read it ({e.strerror or e})") from None
        queries += [line.strip() for line in text.splitlines() if line.strip()]
    if not queries:
        raise ConfigError("no query given: pass the text as an argument or a file of queries with --queries FILE")
    return queries


def main(argv: list[str] | None = None) -> int:
    """``jinabatch search ARGS``; returns the exit code."""
    ap = parser("search", __doc__)
    add_config(ap)
    ap.add_argument("query", nargs="*", help="the text(s) to search for")
    ap.add_argument("--queries", metavar="FILE", help="more queries, one per line")
    ap.add_argument("--compare", metavar="OTHER",
                    help="compare the alias with OTHER: a collection, another alias, or 'previous'")
    ap.add_argument("-k", type=int, default=None, help="how many results (default 5; 10 with --compare)")
    ap.add_argument("--json", action="store_true", help="JSON instead of text (one object per hit; one report "
                                                        "object with --compare)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_intermixed_args(argv)  # queries may follow options: CONFIG --compare OTHER "q1" "q2"
    setup_logging(args.verbose)

    def go() -> int:
        cfg = config_of(args)
        queries = read_queries(args)
        if args.compare is not None:
            from ..load.compare import compare, format_comparison

            report = compare(cfg, args.compare, queries, 10 if args.k is None else args.k)
            print(json.dumps(report.to_dict(), default=str) if args.json
                  else format_comparison(report, cfg.corpus.text_column))
            return 0
        from ..load.milvus import connect
        from ..load.search import format_hits, search_many

        k = 5 if args.k is None else args.k
        with connect(cfg.milvus, cfg.storage) as target:
            results = search_many(target, cfg, queries, k)
        for q, hits in zip(queries, results):
            if args.json:
                for h in hits:
                    print(json.dumps(asdict(h) | ({"query": q} if len(queries) > 1 else {}), default=str))
            else:
                print(f"top {len(hits)} for {q!r} in {cfg.milvus.collection}:")
                print(format_hits(hits))
        return 0

    return run_main(go)

"""Search: `python jobs/search.py CONFIG.toml "query text" [-k 5]` — top-k rows of the alias.

    python jobs/search.py CONFIG "q" ["q2" ...] [--queries FILE] [-k 5] [--json]
    python jobs/search.py CONFIG --compare OTHER "q1" "q2" ... [--queries FILE] [-k 10] [--json]

Embeds each query with the collection's own model, dimensions and query task — through the bundled local
Jina-compatible server when jina.base_url = "local" — and prints rank, score, id and the carried columns.

`--compare OTHER` puts the alias's top-k next to the top-k of OTHER — a physical collection, another alias,
or `previous` (the collection the alias pointed at before its last load) — each side embedding the query
with its own model: overlap@k per query and on average, and the ids that entered, left or moved going from
OTHER to the alias. What to look at before keeping a model switch (`jobs/load.py CONFIG --rollback` undoes
it). `--queries FILE` reads one query per line (blank lines skipped).

With milvus.uri = "embedded" it uses a running embedded server (python jobs/load.py CONFIG --serve) or
starts one. Exit code 0, or 1 with a one-line reason.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

from _cli import run_main, setup_logging

from jinabatch.config import load_config
from jinabatch.errors import ConfigError


def read_queries(args) -> list[str]:
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
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", help="TOML settings (see configs/local.toml)")
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
    logging.getLogger("milvus_lite").setLevel(logging.WARNING)  # start/stop chatter of Milvus Lite

    def go() -> int:
        cfg = load_config(args.config)
        queries = read_queries(args)
        if args.compare is not None:
            from jinabatch.load.compare import compare, format_comparison

            report = compare(cfg, args.compare, queries, 10 if args.k is None else args.k)
            print(json.dumps(report.to_dict(), default=str) if args.json
                  else format_comparison(report, cfg.corpus.text_column))
            return 0
        from jinabatch.load.milvus import connect
        from jinabatch.load.search import format_hits, search_many

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


if __name__ == "__main__":
    sys.exit(main())

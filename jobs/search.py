"""Search: `python jobs/search.py CONFIG.toml "query text" [-k 5]` — top-k rows of the alias.

Embeds the query with the collection's own model (task retrieval.query) — through the bundled local
Jina-compatible server when jina.base_url = "local" — and prints rank, score, id and the carried
columns. With milvus.uri = "embedded" it uses a running embedded server (python jobs/load.py CONFIG
--serve) or starts one for the query. Exit code 0, or 1 with a one-line reason.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict

from _cli import run_main, setup_logging

from jinabatch.config import load_config
from jinabatch.load.search import format_hits, search


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", help="TOML settings (see configs/local.toml)")
    ap.add_argument("query", help="the text to search for")
    ap.add_argument("-k", type=int, default=5, help="how many results (default 5)")
    ap.add_argument("--json", action="store_true", help="one JSON object per hit instead of text")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    setup_logging(args.verbose)
    logging.getLogger("milvus_lite").setLevel(logging.WARNING)  # start/stop chatter of Milvus Lite

    def go() -> int:
        cfg = load_config(args.config)
        hits = search(cfg, args.query, args.k)
        if args.json:
            for h in hits:
                print(json.dumps(asdict(h), default=str))
        else:
            print(f"top {len(hits)} for {args.query!r} in {cfg.milvus.collection}:")
            print(format_hits(hits))
        return 0

    return run_main(go)


if __name__ == "__main__":
    sys.exit(main())

"""Fold a chain of refreshes into one full output: the output at output.path (a delta) with every output it is a
delta of, resolved latest-wins per id, copied row by row (exact vectors, no request sent) into a new folder.

    jinabatch compact CONFIG [--into PATH]     default PATH: output.path + "-compacted"

The compacted output stands for the same rows as the chain's head: a collection loaded from the chain keeps
taking deltas in place when the next refresh sets output.previous to the compacted output. Prints its report as
JSON. Exit code 0, or 1 with a one-line reason.
"""
from __future__ import annotations

import json

from .common import add_config, config_of, parser, run_main, setup_logging

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """``jinabatch compact ARGS``; returns the exit code."""
    ap = parser("compact", __doc__)
    add_config(ap)
    ap.add_argument("--output", help="override output.path (the head of the chain to fold)")
    ap.add_argument("--into", help="where the full output goes (a new folder or s3:// prefix)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    setup_logging(args.verbose)

    def go() -> int:
        from ..embed.compact import compact
        from ..runtime import ray_session

        cfg = config_of(args)
        rep = compact(cfg, args.into, ray_context=lambda: ray_session(cfg))
        print(json.dumps({"output": rep.output, "rows": rep.rows_embedded, "shards": rep.shards_total,
                          "chain": rep.chain.to_json() if rep.chain else None}))
        return 0

    return run_main(go)

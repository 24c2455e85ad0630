"""The embed stage: shard the Parquet corpus, embed every row under the key's rate limits with Ray tasks, write
one Parquet shard per task to output.path, and a _report.json. Rerunning resumes: finished shards are skipped.

    jinabatch embed CONFIG [--output DIR] [--previous DIR] [--no-progress]

Also what ``ray job submit -- python jobs/embed.py CONFIG`` runs on a cluster. Progress: a bar on a terminal,
lines elsewhere. Exit code 0 on success, 1 with a one-line reason otherwise (or when shards failed).
"""
from __future__ import annotations

from .common import add_config, add_output, config_of, embed_outcome, parser, run_main, setup_logging

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """``jinabatch embed ARGS``; returns the exit code."""
    ap = parser("embed", __doc__)
    add_config(ap)
    add_output(ap, previous=True)
    args = ap.parse_args(argv)
    setup_logging(args.verbose)

    def go() -> int:
        from ..embed.driver import run_embed
        from ..observe.report_html import report_page

        cfg = config_of(args)
        code = embed_outcome(run_embed(cfg, progress=not args.no_progress))
        print(f"report: {report_page(cfg)}")
        return code

    return run_main(go)

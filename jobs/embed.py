"""Embed stage: `python jobs/embed.py CONFIG.toml` (also what `ray job submit -- python jobs/embed.py` runs).

Shards the Parquet corpus, embeds every row under the key's rate limits with Ray tasks, writes one Parquet
shard per task to output.path, and a _report.json. Rerunning resumes: finished shards are skipped.
Exit code 0 on success, 1 with a one-line reason otherwise.
"""
from __future__ import annotations

import argparse
import json
import sys

from _cli import run_main, setup_logging

from jinabatch.config import load_config
from jinabatch.embed.driver import run_embed
from jinabatch.storage import Storage


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", help="TOML settings (see configs/local.toml)")
    ap.add_argument("--output", help="override output.path")
    ap.add_argument("--previous", metavar="DIR", help="output.previous: a finished output whose unchanged rows' "
                    "vectors are carried over (incremental run)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    setup_logging(args.verbose)

    def go() -> int:
        output = {k: v for k, v in (("path", args.output), ("previous", args.previous)) if v}
        cfg = load_config(args.config, {"output": output} if output else None)
        rep = run_embed(cfg, progress=not args.no_progress)  # a bar on a terminal, log lines elsewhere
        print(rep.summary())
        print(f"report: {Storage.open(cfg.output.path).uri_of('_report.html')}")
        if not rep.finished:
            print(f"error: {rep.shards_failed} shard(s) failed: {json.dumps([f.to_json() for f in rep.failures])[:500]}; "
                  "rerun the same command to retry them", file=sys.stderr)
            return 1
        return 0

    return run_main(go)


if __name__ == "__main__":
    sys.exit(main())

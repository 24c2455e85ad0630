"""Status of an embed run from its output folder or s3:// prefix (credentials and endpoint from the standard AWS
variables). Reads only what the job writes (_manifest.json, _report.json), never Ray, so it works from any machine
that can read the output.

    jinabatch status OUTPUT [--watch [SECONDS]] [--json]

--watch refreshes until the run is no longer running; --json prints the status as one JSON object (one per
refresh with --watch) for tools. Exit code 0, or 1 with a one-line reason (e.g. no run at OUTPUT).
"""
from __future__ import annotations

import json
import sys
import time

from .common import parser, run_main, setup_logging

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """``jinabatch status ARGS``; returns the exit code."""
    ap = parser("status", __doc__)
    ap.add_argument("output", help="the run's output.path (folder or s3://bucket/prefix)")
    ap.add_argument("--watch", nargs="?", type=float, const=5.0, metavar="SECONDS",
                    help="refresh every SECONDS (default 5) until the run stops")
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    args = ap.parse_args(argv)
    setup_logging()

    def go() -> int:
        from ..observe.status import format_status, read_status
        from ..storage import Storage

        out = Storage.open(args.output)
        clear = sys.stdout.isatty() and not args.json
        while True:
            st = read_status(out)
            if args.json:
                print(json.dumps(st.to_json(), sort_keys=True), flush=True)
            else:
                if clear:
                    sys.stdout.write("\x1b[H\x1b[2J")
                elif args.watch:
                    print(f"--- {time.strftime('%H:%M:%S')}")
                print(format_status(st), flush=True)
            if not args.watch or st.state != "running" or st.stale:
                return 0
            time.sleep(args.watch)

    return run_main(go)

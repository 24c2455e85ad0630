"""Load the embed output into Milvus behind an alias: a new physical collection, filled (bulk import on a Milvus
server, batched upsert on Milvus Lite) and verified (row count, sampled vectors), then the alias
``milvus.collection`` pointed at it.

    jinabatch load CONFIG                load; the alias moves only if the load is verified
    jinabatch load CONFIG --rollback     undo the last load: an in-place delta is undone in place (changed rows get
                                         their old vectors, added rows go, deleted rows return), a whole load
                                         points the alias back at the previous collection
    jinabatch load CONFIG --full         a delta output: fold its chain into one output and load that into a new
                                         collection (instead of applying the delta in place)
    jinabatch load CONFIG --serve        keep the embedded Milvus server (uri = "embedded") running until Ctrl+C,
                                         so search and other clients can use it

Prints the load report as JSON: with ``server`` (what the server is, e.g. whether it has nullable fields),
``carried`` (how each carried column is held: field, nullable field, or key of the dynamic field — see README,
"Carried columns: nulls and dates") and ``import_files`` (where the server read the shards, and the copies made
for it in its bucket or on its disk and removed — see README, "Object storage"). output.path may be s3://.
Exit code 0 on success, 1 with a one-line reason (Milvus's own reason for a failed import).
"""
from __future__ import annotations

import argparse
import json
import signal
import sys

from ..config import Config
from ..errors import ConfigError
from .common import add_config, config_of, parser, run_main, setup_logging

__all__ = ["main", "load_summary", "progress_bar"]


def progress_bar(args: argparse.Namespace) -> bool:
    """The load's tqdm bar: unless ``--no-progress``, on a terminal only (a bar in a log is noise)."""
    return not args.no_progress and sys.stderr.isatty()


def load_summary(rep) -> str:
    """One line for people about a finished load (``rep``: its ``LoadReport``)."""
    if rep.how != "new collection":
        return (f"load: {rep.how} on {rep.physical} ({rep.mode}, {rep.seconds:.1f}s): {rep.rows_sent} rows sent, "
                f"{rep.rows_deleted} deleted, {rep.rows} rows now behind alias {rep.collection!r}")
    return (f"load: {rep.rows} rows into {rep.physical} ({rep.mode}, {rep.seconds:.1f}s), alias {rep.collection!r} "
            f"now points at it (was {rep.previous}); dropped {rep.dropped or 'none'}")


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def _serve(cfg: Config) -> int:
    from ..load.server import EmbeddedServer, milvus_answers

    ms = cfg.milvus
    if ms.uri != "embedded":
        raise ConfigError(f"--serve runs the embedded server; milvus.uri is {ms.uri!r}, not \"embedded\"")
    if milvus_answers(ms.port):
        raise ConfigError(f"a Milvus server already answers on 127.0.0.1:{ms.port}; nothing to start")
    with EmbeddedServer.from_settings(ms, cfg.storage) as server:
        print(f"Milvus serving {server.uri} (data in {server.storage}); Ctrl+C to stop", flush=True)
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
    return 0


def main(argv: list[str] | None = None) -> int:
    """``jinabatch load ARGS``; returns the exit code."""
    ap = parser("load", __doc__)
    add_config(ap)
    what = ap.add_mutually_exclusive_group()
    what.add_argument("--rollback", action="store_true", help="point the alias back at the previous collection")
    what.add_argument("--serve", action="store_true", help="run the embedded Milvus server until Ctrl+C")
    what.add_argument("--full", action="store_true",
                      help="a delta output: load its whole chain into a new collection instead of in place")
    ap.add_argument("--output", help="override output.path (the embed output folder to load)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    setup_logging(args.verbose)

    def go() -> int:
        from ..load.stage import run_load

        cfg = config_of(args)
        if args.serve:
            return _serve(cfg)
        print(json.dumps(run_load(cfg, rollback=args.rollback, full=args.full,
                                  progress=progress_bar(args)).to_json()))
        return 0

    return run_main(go)

"""Load stage: `python jobs/load.py CONFIG.toml` — the embed output into Milvus behind an alias.

Creates a new physical collection, fills it (bulk import on a Milvus server, batched upsert on Milvus
Lite), verifies it (row count, sampled vectors), then points the alias `milvus.collection` at it.

    python jobs/load.py CONFIG.toml             load; the alias moves only if the load is verified
    python jobs/load.py CONFIG.toml --rollback  point the alias back at the previous collection
    python jobs/load.py CONFIG.toml --serve     keep the embedded Milvus server (uri = "embedded")
                                                running until Ctrl+C, so search and other clients can use it

Prints the load report as JSON: with `server` (what the server is, e.g. whether it has nullable fields),
`carried` (how each carried column is held: field, nullable field, or key of the dynamic field — see README,
"Carried columns: nulls and dates") and `import_files` (where the server read the shards, and the copies made
for it in its bucket or on its disk and removed — see README, "Object storage"). output.path may be s3://.
Exit code 0 on success, 1 with a one-line reason (Milvus's own reason for a failed import).
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys

from _cli import run_main, setup_logging

from jinabatch.config import load_config
from jinabatch.errors import ConfigError
from jinabatch.load.stage import run_load


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def _serve(cfg) -> int:
    from jinabatch.load.server import EmbeddedServer, milvus_answers

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
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", help="TOML settings (see configs/local.toml)")
    ap.add_argument("--output", help="override output.path (the embed output folder to load)")
    what = ap.add_mutually_exclusive_group()
    what.add_argument("--rollback", action="store_true", help="point the alias back at the previous collection")
    what.add_argument("--serve", action="store_true", help="run the embedded Milvus server until Ctrl+C")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    setup_logging(args.verbose)
    logging.getLogger("milvus_lite").setLevel(logging.WARNING)  # start/stop chatter of Milvus Lite

    def go() -> int:
        cfg = load_config(args.config, {"output": {"path": args.output}} if args.output else None)
        if args.serve:
            return _serve(cfg)
        rep = run_load(cfg, rollback=args.rollback, progress=not args.no_progress and sys.stderr.isatty())
        print(json.dumps(rep.to_json()))
        return 0

    return run_main(go)


if __name__ == "__main__":
    sys.exit(main())

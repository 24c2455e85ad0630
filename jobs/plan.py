"""Plan: `python jobs/plan.py CONFIG.toml [--json]` — the whole plan and its cost, without calling the API.

Lists and checks the corpus (a file, folder, glob or s3:// prefix), finds duplicate ids, cuts the shards, says
what a rerun would skip, and estimates tokens, requests, time under [limits] and cost at
jina.price_per_million_tokens. The plan is kept in output.path/_plan/, so `jobs/embed.py` reuses it.
With a [milvus] section, also checks that the configured Milvus can hold the carried columns and says how
each will be held (jinabatch.load.precheck). Exit code 0, or 1 with a one-line reason (bad input is found
here, before any request).
"""
from __future__ import annotations

import argparse
import json
import sys

from _cli import run_main, setup_logging

from jinabatch.config import load_config
from jinabatch.embed.preview import format_preview, preview
from jinabatch.load.precheck import check_load_target
from jinabatch.runtime import ray_session


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", help="TOML settings (see configs/local.toml)")
    ap.add_argument("--output", help="override output.path")
    ap.add_argument("--json", action="store_true", help="one JSON object for tools")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    setup_logging(args.verbose)

    def go() -> int:
        cfg = load_config(args.config, {"output": {"path": args.output}} if args.output else None)
        p, plan = preview(cfg)
        target = None
        if "milvus" in cfg.model_fields_set:  # what the load would refuse, refused now
            target = check_load_target(plan.column_types, cfg.milvus, files=plan.files,
                                       id_column=cfg.corpus.id_column, id_type=plan.id_type,
                                       storage=cfg.storage, output=cfg.output.path,
                                       ray_context=lambda: ray_session(cfg)).summary()  # Ray Data if big
        if args.json:
            print(json.dumps({**p.to_dict(), "load_target": target}, indent=2))
        else:
            print(format_preview(p) + (f"\n{target}" if target else ""))
        return 0

    return run_main(go)


if __name__ == "__main__":
    sys.exit(main())

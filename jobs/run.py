"""The whole job: `python jobs/run.py CONFIG.toml` = embed, then load into Milvus, then search (what `make run` runs).

Checks first — before any API request — that the configured Milvus can hold the carried columns (names,
types, text lengths; where nulls go on this server: jinabatch.load.precheck) and prints how each will be held.
Then embeds the corpus (resuming if a previous run was interrupted), loads the shards into a new verified
collection behind the alias, and — with --query, or on the sample corpus by default — prints the top hits
of a few queries so a person can judge the result. Services the config names as local (the Jina-compatible
server, Ray, the embedded Milvus server) are started for the run and stopped after it.
Exit code 0 on success, 1 with a one-line reason.
"""
from __future__ import annotations

import argparse
import json
import sys

from _cli import run_main, setup_logging
from jinabatch.config import load_config
from jinabatch.embed.driver import run_embed
from jinabatch.embed.plan import plan_corpus
from jinabatch.load.milvus import connect
from jinabatch.load.precheck import check_load_target
from jinabatch.load.search import format_hits, search_target
from jinabatch.load.stage import run_load
from jinabatch.runtime import lazy_ray
from jinabatch.storage import Storage

SAMPLE_QUERIES = ["When was artificial intelligence founded?", "baking bread in a wood-fired oven",
                  "telescopes observing a distant galaxy"]


def check_target(cfg) -> str:
    """Refuse now what the load would refuse after the tokens are spent; the summary of how columns are held.
    The plan made here is kept in output.path/_plan/, so the embed stage reuses it instead of planning again."""
    with lazy_ray(cfg) as need_ray:  # the passes over every row run on Ray Data for a big corpus
        plan = plan_corpus(cfg, Storage.open(cfg.output.path, cfg.storage), ray_context=need_ray)
        return check_load_target(plan.column_types, cfg.milvus, files=plan.files, id_column=cfg.corpus.id_column,
                                 id_type=plan.id_type, storage=cfg.storage, output=cfg.output.path,
                                 ray_context=need_ray).summary()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", help="TOML settings (see configs/local.toml)")
    ap.add_argument("--query", action="append", help="search this after loading (repeatable)")
    ap.add_argument("--output", help="override output.path")
    ap.add_argument("--previous", metavar="DIR", help="output.previous: a finished output whose unchanged rows' "
                    "vectors are carried over (incremental run)")
    ap.add_argument("-k", type=int, default=3, help="hits per query")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    setup_logging(args.verbose)

    def go() -> int:
        output = {k: v for k, v in (("path", args.output), ("previous", args.previous)) if v}
        cfg = load_config(args.config, {"output": output} if output else None)
        progress = not args.no_progress and sys.stderr.isatty()
        print(check_target(cfg), flush=True)  # before the embed stage sends anything
        rep = run_embed(cfg, progress=not args.no_progress)  # a bar on a terminal, log lines elsewhere
        print(f"embed: {rep.summary()}", flush=True)
        report_html = Storage.open(cfg.output.path, cfg.storage).uri_of("_report.html")
        if not rep.finished:
            print(f"error: {rep.shards_failed} shard(s) failed: {json.dumps(rep.failures)[:500]}; "
                  "rerun to retry them (finished shards are kept)", file=sys.stderr)
            return 1
        queries = args.query or (SAMPLE_QUERIES if "sample" in cfg.corpus.path else [])
        with connect(cfg.milvus, cfg.storage) as target:  # one embedded server for load and search
            load = run_load(cfg, progress=progress, target=target)
            print(f"load: {load.rows} rows into {load.physical} ({load.mode}, {load.seconds:.1f}s), alias "
                  f"{load.collection!r} now points at it (was {load.previous}); dropped {load.dropped or 'none'}",
                  flush=True)
            for q in queries:
                print(f"\nsearch {q!r}:\n{format_hits(search_target(target, cfg, q, args.k))}", flush=True)
        print(f"\nreport (charts of the embed and the load): {report_html}\n"
              f"status: python jobs/status.py {cfg.output.path}", flush=True)
        return 0

    return run_main(go)


if __name__ == "__main__":
    sys.exit(main())

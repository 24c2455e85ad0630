"""The whole job: embed, then load into Milvus, then search (what ``make run`` runs).

    jinabatch run CONFIG [--query Q]... [-k 3] [--output DIR] [--previous DIR] [--no-progress]

Checks first — before any API request — that the configured Milvus can hold the carried columns (names, types,
text lengths; where nulls go on this server: jinabatch.load.precheck) and prints how each will be held. Then
embeds the corpus (resuming if a previous run was interrupted), loads the shards into a new verified collection
behind the alias, and — with --query, or on the sample corpus by default — prints the top hits of a few queries
so a person can judge the result. Services the config names as local (the Jina-compatible server, Ray, the
embedded Milvus server) are started for the run and stopped after it. Exit code 0 on success, 1 with a one-line
reason.
"""
from __future__ import annotations

from .common import add_config, add_output, check_target, config_of, embed_outcome, parser, run_main, setup_logging
from .load import load_summary, progress_bar

__all__ = ["main", "SAMPLE_QUERIES"]

SAMPLE_QUERIES = ["When was artificial intelligence founded?", "baking bread in a wood-fired oven",
                  "telescopes observing a distant galaxy"]


def main(argv: list[str] | None = None) -> int:
    """``jinabatch run ARGS``; returns the exit code."""
    ap = parser("run", __doc__)
    add_config(ap)
    ap.add_argument("--query", action="append", help="search this after loading (repeatable)")
    ap.add_argument("-k", type=int, default=3, help="hits per query")
    add_output(ap, previous=True)
    args = ap.parse_args(argv)
    setup_logging(args.verbose)

    def go() -> int:
        from ..embed.driver import run_embed
        from ..embed.plan import plan_corpus
        from ..load.milvus import connect
        from ..load.search import format_hits, search_target
        from ..load.stage import run_load
        from ..observe.report_html import report_page
        from ..runtime import lazy_ray
        from ..storage import Storage

        cfg = config_of(args)
        # refuse now what the load would refuse after the tokens are spent; the plan made here is kept in
        # output.path/_plan/, so the embed stage reuses it instead of planning again. The passes over every row
        # run on Ray Data for a big corpus, on one Ray started only if one of them needs it
        with lazy_ray(cfg) as need_ray:
            plan = plan_corpus(cfg, Storage.open(cfg.output.path, cfg.storage), ray_context=need_ray)
            print(check_target(cfg, plan, ray_context=need_ray), flush=True)
        if code := embed_outcome(run_embed(cfg, progress=not args.no_progress), prefix="embed: "):
            return code
        queries = args.query or (SAMPLE_QUERIES if "sample" in cfg.corpus.path else [])
        with connect(cfg.milvus, cfg.storage) as target:  # one embedded server for load and search
            print(load_summary(run_load(cfg, progress=progress_bar(args), target=target)), flush=True)
            for q in queries:
                print(f"\nsearch {q!r}:\n{format_hits(search_target(target, cfg, q, args.k))}", flush=True)
        print(f"\nreport (charts of the embed and the load): {report_page(cfg)}\n"
              f"status: jinabatch status {cfg.output.path}", flush=True)
        return 0

    return run_main(go)

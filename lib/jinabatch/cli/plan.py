"""The whole plan and its cost, without calling the API: list and check the corpus (a file, folder, glob or s3://
prefix), find duplicate ids, cut the shards, say what a rerun would skip, and estimate tokens, requests, time under
[limits] and cost at jina.price_per_million_tokens.

    jinabatch plan CONFIG [--output DIR] [--json]

The plan is kept in output.path/_plan/, so the embed stage reuses it. With a [milvus] section, also checks that the
configured Milvus can hold the carried columns and says how each will be held (jinabatch.load.precheck). Exit code
0, or 1 with a one-line reason (bad input is found here, before any request).
"""
from __future__ import annotations

import json

from .common import add_config, add_output, check_target, config_of, parser, run_main, setup_logging

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """``jinabatch plan ARGS``; returns the exit code."""
    ap = parser("plan", __doc__)
    add_config(ap)
    ap.add_argument("--json", action="store_true", help="one JSON object for tools")
    add_output(ap, progress=False)
    args = ap.parse_args(argv)
    setup_logging(args.verbose)

    def go() -> int:
        from ..embed.preview import format_preview, preview
        from ..runtime import lazy_ray

        cfg = config_of(args)
        p, plan = preview(cfg)
        target = None
        if "milvus" in cfg.model_fields_set:  # what the load would refuse, refused now (on Ray Data if big)
            with lazy_ray(cfg) as need_ray:
                target = check_target(cfg, plan, ray_context=need_ray)
        if args.json:
            print(json.dumps({**p.to_dict(), "load_target": target}, indent=2))
        else:
            print(format_preview(p) + (f"\n{target}" if target else ""))
        return 0

    return run_main(go)

"""The ``jinabatch`` command: one installed entry point, a subcommand per stage.

    jinabatch run|plan|embed|load|refresh|compact|search|status|serve [ARGS...]     (also: python -m jinabatch ...)

Each subcommand is a module here with ``main(argv) -> int`` and its own ``--help``; ``jobs/<stage>.py`` are thin
wrappers calling the same ``main`` (what ``ray job submit -- python jobs/...`` runs from a checkout). Every command
exits 0 on success and 1 with a one-line reason (``error: ConfigError: ...``) on a ``JinaBatchError``.
"""
from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

__all__ = ["main", "COMMANDS"]

COMMANDS = {  # name -> what it does (the module jinabatch.cli.<name> runs it)
    "run": "the whole job: check the load target, embed, load into Milvus, search",
    "plan": "the plan and its cost, without calling the API",
    "embed": "the embed stage (rerun to resume)",
    "load": "load the embed output into Milvus behind the alias (or roll back, or serve the embedded Milvus)",
    "search": "top-k rows of the alias for a query (or compare it with another collection)",
    "refresh": "one scheduled refresh: a delta of the last night, applied in place (what a cron job runs)",
    "compact": "fold a chain of refreshes (a full output and its deltas) into one full output",
    "status": "status of a running or finished embed run, from its output",
    "serve": "the local Jina-compatible embeddings server, in the foreground",
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {what}" for name, what in COMMANDS.items()]
    return ("usage: jinabatch COMMAND [ARGS...]    (jinabatch COMMAND --help for its arguments)\n\n"
            "Batch embeddings with the Jina API over a Parquet corpus, into Milvus.\n\ncommands:\n" + "\n".join(lines))


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``jinabatch COMMAND ARGS...`` (``argv`` without the program name; default ``sys.argv[1:]``); returns
    the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage(), file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"jinabatch: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    return importlib.import_module(f"{__name__}.{name}").main(rest)

"""What the subcommands share: argument parsing, logging, the config with command-line overrides, exit codes,
and how an embed run's outcome is printed (``run`` and ``embed`` alike)."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable

from ..config import Config, load_config
from ..errors import JinaBatchError

__all__ = ["parser", "add_config", "add_output", "config_of", "setup_logging", "run_main", "embed_outcome",
           "check_target", "EXIT_ERROR", "EXIT_INTERRUPTED"]

EXIT_ERROR, EXIT_INTERRUPTED = 1, 130
QUIET_LOGGERS = ("httpx", "httpcore", "ray", "pymilvus", "filelock", "milvus_lite")


def parser(name: str, doc: str) -> argparse.ArgumentParser:
    """The parser of ``jinabatch NAME``, described by the command module's ``doc``."""
    return argparse.ArgumentParser(prog=f"jinabatch {name}", description=doc,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def add_config(ap: argparse.ArgumentParser) -> None:
    """The positional CONFIG (a TOML file)."""
    ap.add_argument("config", help="TOML settings (see configs/local.toml)")


def add_output(ap: argparse.ArgumentParser, *, previous: bool = False, progress: bool = True) -> None:
    """``--output`` (and ``--previous``, ``--no-progress``) overriding the config; ``-v``."""
    ap.add_argument("--output", help="override output.path")
    if previous:
        ap.add_argument("--previous", metavar="DIR", help="output.previous: a finished output whose unchanged rows' "
                        "vectors are carried over (incremental run)")
    if progress:
        ap.add_argument("--no-progress", action="store_true", help="no progress bar or lines (logs only)")
    ap.add_argument("-v", "--verbose", action="store_true")


def config_of(args: argparse.Namespace) -> Config:
    """The config file of ``args.config`` with ``--output`` / ``--previous`` (where the command has them) applied."""
    output = {k: v for k, v in (("path", getattr(args, "output", None)), ("previous", getattr(args, "previous", None)))
              if v}
    return load_config(args.config, {"output": output} if output else None)


def setup_logging(verbose: bool = False) -> None:
    """Log lines with time, level and logger on stderr (DEBUG with ``verbose``); chatty libraries at WARNING."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_main(fn: Callable[[], int | None]) -> int:
    """Call ``fn()``; a JinaBatchError becomes a one-line reason on stderr and exit code 1, Ctrl+C 130."""
    try:
        return fn() or 0
    except JinaBatchError as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("error: interrupted; rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED


def check_target(cfg: Config, plan, ray_context=None) -> str:
    """What the configured Milvus would refuse of ``plan`` (``embed.plan.Plan``) refused now, before any request
    (``load.precheck.check_load_target``; on Ray Data through ``ray_context`` for a big corpus); the summary of how
    each carried column will be held."""
    from ..load.precheck import check_load_target

    return check_load_target(plan.column_types, cfg.milvus, files=plan.files, id_column=cfg.corpus.id_column,
                             id_type=plan.id_type, storage=cfg.storage, output=cfg.output.path,
                             ray_context=ray_context).summary()


def embed_outcome(rep, *, prefix: str = "") -> int:
    """Print an embed run's summary (``rep``: its ``EmbedReport``); 0 if it finished, else 1 naming the failed
    shards on stderr (a rerun retries them, finished shards are kept)."""
    print(f"{prefix}{rep.summary()}", flush=True)
    if rep.finished:
        return 0
    failures = json.dumps([f.to_json() for f in rep.failures])
    print(f"error: {rep.shards_failed} shard(s) failed: {failures[:500]}; rerun the same command to retry them "
          "(finished shards are kept)", file=sys.stderr)
    return EXIT_ERROR

"""Shared bits of the job entry points: logging, config loading, one-line failures with an exit code."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))  # runs from a plain checkout too

from jinabatch.errors import JinaBatchError  # noqa: E402

EXIT_ERROR, EXIT_CRASH = 1, 2


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore", "ray", "pymilvus", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_main(fn) -> int:
    """Call ``fn()``; a JinaBatchError becomes a one-line reason on stderr and exit code 1."""
    try:
        return fn() or 0
    except JinaBatchError as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("error: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130

"""The local Jina-compatible embeddings server, until SIGINT/SIGTERM; prints its API base URL on one line.

    jinabatch serve [--port 8080] [--rpm N --tpm N --concurrency N --latency-ms MS --fault-rate R --faults ...]

Keys come from ``--key`` (repeatable) and/or ``$JINAAI_API_KEY`` (comma-separated); they are never printed. The
server's own flags: ``jinabatch serve --help``.
"""
from __future__ import annotations

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """``jinabatch serve ARGS`` (the local server's own flags); returns the exit code."""
    from ..runtime import serve_stand_in

    return serve_stand_in(argv)

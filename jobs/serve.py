"""Run the local Jina-compatible embeddings server until SIGINT/SIGTERM.

    python jobs/serve.py --port 8080 --rpm 500 --tpm 1000000 --concurrency 5

Prints the API base URL (``http://127.0.0.1:PORT/v1``) on one line. Keys come from ``--key``
(repeatable) and/or ``$JINAAI_API_KEY`` (comma-separated); they are never printed. See
``python jobs/serve.py --help`` and ``jinabatch.local_api.server``.
"""
import sys

from jinabatch.local_api.server import main

if __name__ == "__main__":
    sys.exit(main())

"""The local Jina-compatible embeddings server, in the foreground.

`python jobs/serve.py ARGS...` is `jinabatch serve ARGS...` (`jinabatch serve --help`), from a checkout with or without
the package installed.
"""
import sys

import _cli

if __name__ == "__main__":
    sys.exit(_cli.run("serve"))

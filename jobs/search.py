"""Top-k rows of the alias for a query (--compare OTHER).

`python jobs/search.py ARGS...` is `jinabatch search ARGS...` (`jinabatch search --help`), from a checkout with or without
the package installed.
"""
import sys

import _cli

if __name__ == "__main__":
    sys.exit(_cli.run("search"))

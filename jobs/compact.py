"""Fold a chain of refreshes into one full output (`jinabatch compact ARGS...`).

`python jobs/compact.py ARGS...` is `jinabatch compact ARGS...` (`jinabatch compact --help`), from a checkout with or
without the package installed.
"""
import sys

import _cli

if __name__ == "__main__":
    sys.exit(_cli.run("compact"))

"""The plan and its cost, without calling the API.

`python jobs/plan.py ARGS...` is `jinabatch plan ARGS...` (`jinabatch plan --help`), from a checkout with or without
the package installed.
"""
import sys

import _cli

if __name__ == "__main__":
    sys.exit(_cli.run("plan"))

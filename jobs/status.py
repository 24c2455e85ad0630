"""Status of a running or finished embed run, from its output.

`python jobs/status.py ARGS...` is `jinabatch status ARGS...` (`jinabatch status --help`), from a checkout with or without
the package installed.
"""
import sys

import _cli

if __name__ == "__main__":
    sys.exit(_cli.run("status"))

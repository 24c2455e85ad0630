"""The embed stage (rerun to resume); what `ray job submit -- python jobs/embed.py CONFIG` runs on a cluster.

`python jobs/embed.py ARGS...` is `jinabatch embed ARGS...` (`jinabatch embed --help`), from a checkout with or without
the package installed.
"""
import sys

import _cli

if __name__ == "__main__":
    sys.exit(_cli.run("embed"))

"""The whole job: embed, load into Milvus, search (what make run runs).

`python jobs/run.py ARGS...` is `jinabatch run ARGS...` (`jinabatch run --help`), from a checkout with or without
the package installed.
"""
import sys

import _cli

if __name__ == "__main__":
    sys.exit(_cli.run("run"))

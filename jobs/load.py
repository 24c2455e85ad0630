"""Load the embed output into Milvus behind the alias (--rollback, --serve).

`python jobs/load.py ARGS...` is `jinabatch load ARGS...` (`jinabatch load --help`), from a checkout with or without
the package installed.
"""
import sys

import _cli

if __name__ == "__main__":
    sys.exit(_cli.run("load"))

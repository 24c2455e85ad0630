"""One scheduled refresh: a delta of the last night, applied in place (`jinabatch refresh ARGS...`).

`python jobs/refresh.py ARGS...` is `jinabatch refresh ARGS...` (`jinabatch refresh --help`), from a checkout with or
without the package installed; it is what configs/raycronjob.yaml runs every night.
"""
import sys

import _cli

if __name__ == "__main__":
    sys.exit(_cli.run("refresh"))

"""One plan-time check of carried columns, for the scale benchmark: run in a fresh process and watched.

    python tests/bench/precheck_scan.py CORPUS --engine ray|local

Lists the corpus and opens its footers (as the plan does), then runs ``check_load_target`` with the text column
carried — the column a real corpus most often carries and the one the check reads the most bytes of — on Ray
Data (``--engine ray``: a local Ray started for it) or in this process (``--engine local``, what every corpus
got before). Prints one JSON line: rows, seconds of the check alone, seconds Ray took to start (apart: in
``jobs/run.py`` the plan's passes start it), longest text.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "lib"))

import pyarrow as pa  # noqa: E402

from jinabatch.config import MilvusSettings, parse_config  # noqa: E402
from jinabatch.embed.corpus import inspect_files, list_corpus  # noqa: E402
from jinabatch.load.precheck import check_load_target  # noqa: E402
from jinabatch.load.target import ServerInfo  # noqa: E402
from jinabatch.runtime import lazy_ray  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpus")
    ap.add_argument("--engine", choices=("ray", "local"), default="ray")
    a = ap.parse_args(argv)
    cfg = parse_config({"corpus": {"path": a.corpus, "columns": ["text"]}})
    root, stats = list_corpus(cfg.corpus)
    files = inspect_files(root, stats, cfg.corpus).files
    rows = sum(f.rows for f in files)
    with lazy_ray(cfg) as need_ray:
        t0 = time.monotonic()
        if a.engine == "ray":  # started apart: in jobs/run.py the plan's passes have started it already
            need_ray()
        t1 = time.monotonic()
        check = check_load_target({"text": pa.string()}, MilvusSettings(uri="embedded"), files=files,
                                  server=ServerInfo.of("server", "v2.3.5-lite"), ray_context=need_ray,
                                  local_max_rows=0 if a.engine == "ray" else rows)
        seconds = time.monotonic() - t1
    print(json.dumps({"engine": a.engine, "rows": rows, "seconds": seconds, "ray_start": t1 - t0,
                      "longest": check.columns["text"].longest}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

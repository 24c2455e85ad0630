"""Write the sample corpus `make run` embeds: readable passages on a few topics (jinabatch.local_api.samples).

`python jobs/sample_corpus.py --out out/sample/corpus [--rows 2000] [--files 2]`; does nothing if the folder
already holds the same corpus, so `make run` can call it every time.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import _cli  # noqa: F401  (puts lib/ on sys.path for a plain checkout)
from jinabatch.local_api.samples import write_corpus


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out/sample/corpus")
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--files", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    stamp = Path(a.out) / "_sample.txt"
    want = f"rows={a.rows} files={a.files} seed={a.seed}"
    if stamp.exists() and stamp.read_text() == want:
        print(f"sample corpus already at {a.out} ({want})")
        return 0
    paths = write_corpus(a.out, a.rows, files=a.files, seed=a.seed)
    stamp.write_text(want)
    print(f"wrote {a.rows} rows in {len(paths)} files to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Synthetic corpora for the scale benchmark: string ids, short texts, row groups of 5,000 rows.

    python tests/bench/scale_corpus.py --rows 20000000 --files 40 --out out/scale/corpus-20M

Written once (a marker file records what is there); a few duplicate ids are planted (every 1,000,000th
row repeats an id from the file before), so the duplicate pass has work to do. Generation is vectorised
(numpy/pyarrow), so 50M rows take a few minutes here.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

WORDS = np.array("the of and to in is was for on that with as by at from his her an which this be are or had "
                 "embedding vector search corpus shard token limit model batch ray parquet milvus river ocean "
                 "history science music garden bread planet".split())
DUP_EVERY = 1_000_000


def write(out: Path, rows: int, files: int, row_group: int = 5000, seed: int = 0) -> list[Path]:
    marker = out / "_corpus.txt"
    want = f"rows={rows} files={files} row_group={row_group} seed={seed}"
    if marker.exists() and marker.read_text() == want:
        return sorted(out.glob("*.parquet"))
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.parquet"):
        old.unlink()
    rng = np.random.default_rng(seed)
    per_file = -(-rows // files)
    paths = []
    start = 0
    for f in range(files):
        n = min(per_file, rows - start)
        if n <= 0:
            break
        path = out / f"part-{f:05d}.parquet"
        with pq.ParquetWriter(path, pa.schema([("id", pa.string()), ("text", pa.string())])) as w:
            for lo in range(0, n, row_group * 20):
                m = min(row_group * 20, n - lo)
                g = np.arange(start + lo, start + lo + m)
                ids = pc.binary_join_element_wise("doc-", pa.array(g.astype(str)), "")
                dup = (g % DUP_EVERY == DUP_EVERY - 1) & (g > DUP_EVERY)
                if dup.any():  # repeat an id from a million rows earlier
                    ids = pa.array(np.where(dup, np.char.add("doc-", (g - DUP_EVERY + 1).astype(str)),
                                            np.asarray(ids.to_numpy(zero_copy_only=False))))
                k = rng.integers(3, 12, size=m)
                w1 = WORDS[rng.integers(0, len(WORDS), size=m)]
                w2 = WORDS[rng.integers(0, len(WORDS), size=m)]
                texts = np.char.add(np.char.add(np.char.add(w1, " "), w2), np.char.add(" item ", k.astype(str)))
                w.write_table(pa.table({"id": ids, "text": pa.array(texts)}), row_group_size=row_group)
        paths.append(path)
        start += n
    marker.write_text(want)
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, required=True)
    ap.add_argument("--files", type=int, default=40)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    paths = write(Path(a.out), a.rows, a.files)
    print(f"{a.rows} rows in {len(paths)} files at {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

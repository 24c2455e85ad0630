"""Fixtures: a real Milvus standalone server for the session, Milvus Lite files, embed output folders.

* ``milvus_server`` — one ``jinabatch.load.server.EmbeddedServer`` for the whole session (the job's own
  embedded-server helper, so starting/stopping it is exercised by every Milvus test), with its data dir
  under the session's tmp dir; stopped at the end. Only one can run per machine, so nothing else starts
  one: tests of ``uri = "embedded"`` point ``milvus.port`` at this server and the job reuses it.
* ``milvus_config(uri, out, **milvus)`` — a ``Config`` for a load of ``out`` into ``uri``, each test
  under its own alias so tests sharing the server never see each other's collections.
* ``make_output(path, texts, ...)`` — writes an embed output folder following the embed stage's contract
  (``shards/shard-NNNNN.parquet`` + ``_report.json``) with the vectors the local Jina server would
  return for each text (``jinabatch.local_api.fakemodel.embed``, task retrieval.passage).
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jinabatch.config import parse_config
from jinabatch.local_api.fakemodel import embed

__all__ = ["milvus_server", "milvus_config", "make_output", "sample_texts", "MODEL", "DIMS"]

MODEL, DIMS = "jina-embeddings-v3", 64
_aliases = itertools.count()
_TOPICS = ["ocean tides and the moon", "baking sourdough bread at home", "training a neural network",
           "the history of the roman empire", "growing tomatoes in a greenhouse", "jazz piano chord voicings",
           "repairing a bicycle puncture", "black holes and general relativity", "learning to speak japanese",
           "marathon training for beginners"]


def sample_texts(n: int) -> list[str]:
    """n distinct texts, on a handful of topics, each with a unique word so every row is findable."""
    return [f"{_TOPICS[i % len(_TOPICS)]} note{i}x" for i in range(n)]


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory):
    from jinabatch.load.server import EmbeddedServer

    server = EmbeddedServer(tmp_path_factory.mktemp("milvus-server"), port=19530).start()
    yield server
    server.stop()


@pytest.fixture
def milvus_config(tmp_path):
    def make(uri: str, out: str | Path, **milvus):
        milvus.setdefault("collection", f"t{next(_aliases)}_{tmp_path.name[-12:].replace('-', '_')}")
        return parse_config({"output": {"path": str(out)}, "milvus": {"uri": uri, **milvus},
                             "jina": {"base_url": "local", "model": MODEL, "dimensions": DIMS}})
    return make


def make_output(path: str | Path, texts: list[str], *, rows_per_shard: int = 100, id_type: str = "string",
                model: str = MODEL, dims: int = DIMS, extra: dict[str, list] | None = None,
                id_column: str = "id") -> dict[str, np.ndarray]:
    """Write an embed output folder; returns {id: vector} for every row written."""
    path = Path(path)
    (path / "shards").mkdir(parents=True, exist_ok=True)
    vectors = embed(model, "retrieval.passage", dims, texts)
    ids = [f"doc-{i:06d}" for i in range(len(texts))] if id_type == "string" else list(range(1000, 1000 + len(texts)))
    extra = extra or {}
    columns = ["text", *extra]
    n_shards = 0
    for n_shards, start in enumerate(range(0, len(texts), rows_per_shard), 1):
        stop = min(start + rows_per_shard, len(texts))
        flat = pa.array(vectors[start:stop].reshape(-1), pa.float32())
        table = pa.table({
            id_column: pa.array(ids[start:stop], pa.string() if id_type == "string" else pa.int64()),
            "embedding": pa.ListArray.from_arrays(pa.array(np.arange(0, (stop - start + 1) * dims, dims), pa.int32()), flat),
            "text": texts[start:stop],
            **{k: v[start:stop] for k, v in extra.items()},
        })
        meta = {"model": model, "task": "retrieval.passage", "dimensions": dims, "embedding_type": "base64",
                "normalized": True, "source_file": "corpus.parquet", "row_start": start, "row_stop": stop,
                "rows": stop - start, "fingerprint": "test", "shard": n_shards - 1, "id_column": id_column,
                "columns": columns}
        table = table.replace_schema_metadata({b"jinabatch": json.dumps(meta).encode()})
        pq.write_table(table, path / "shards" / f"shard-{n_shards - 1:05d}.parquet")
    (path / "shards" / "shard-00000.parquet.tmp-abc").write_bytes(b"half a file")  # must be ignored
    report = {"rows_in": len(texts), "rows_embedded": len(texts), "rows_dead_letter": 0, "shards_total": n_shards,
              "model": model, "task": "retrieval.passage", "dimensions": dims, "id_column": id_column,
              "columns": columns, "fingerprint": "test", "finished": True}
    (path / "_report.json").write_text(json.dumps(report))
    return dict(zip(ids, vectors))

"""Fixtures: a real Milvus standalone server for the session, Milvus Lite files, embed output folders.

* ``milvus_server`` — the session's ``jinabatch.load.server.EmbeddedServer`` on local storage (the job's own
  embedded-server helper, so starting/stopping it is exercised by every Milvus test), with its data dir
  under the session's tmp dir; stopped at the end. Tests of ``uri = "embedded"`` point ``milvus.port`` at
  this server and the job reuses it.
* ``milvus_s3_server`` — an ``EmbeddedServer`` keeping its data in a bucket of the session's SeaweedFS
  (``milvus.bucket``; ``.bucket.bucket`` is its name), for the tests of a Milvus on object storage.
* ``milvus_slot`` — the one embedded Milvus the session runs at a time. Two embedded servers on one machine
  collide on fixed internal ports (the second never becomes ready), so the two servers above take turns:
  asking for one stops the other first (collections released, SIGINT, exit awaited) and restarts it when it
  is asked for again — its data dir (and for the S3 one, its bucket) is kept, so collections survive. A test
  that lets a job start a server of its own calls ``milvus_slot.vacate()`` first. Across pytest processes the
  rule is the caller's: every run that starts Milvus holds ``flock /tmp/jinabatch-milvus.lock``. The S3-backed
  server is stopped at the end of the module that used it, before the S3 server it stores into goes away.
* ``milvus_config(uri, out, **milvus)`` — a ``Config`` for a load of ``out`` into ``uri``, each test
  under its own alias so tests sharing the server never see each other's collections.
* ``make_output(path, texts, ...)`` — writes an embed output folder following the embed stage's contract
  (``shards/shard-NNNNN.parquet`` + ``_report.json``) with the vectors the local Jina server would
  return for each text (``jinabatch.local_api.fakemodel.embed``, task retrieval.passage unless ``task`` says).
  ``extra`` columns of a type the embed stage carries are converted as its ShardWriter does
  (``jinabatch.embed.columns``: timestamps → ISO text, ...); other types are written as given, for tests of the
  load's own checks.
* ``carried_sample(n)`` — carried columns as real corpora have them (nulls in string, int, float and bool
  columns, a UTC timestamp and a date32 column, also with nulls) and, independently computed, the values a
  load must give back for them (``None`` for a null, ISO-8601 text for dates).
"""
from __future__ import annotations

import itertools
import json
import os
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jinabatch.config import parse_config
from jinabatch.embed.columns import shard_fields, shard_type, to_shard
from jinabatch.local_api.fakemodel import embed

__all__ = ["milvus_server", "milvus_s3_server", "milvus_s3_module", "milvus_slot", "milvus_config", "make_output",
           "sample_texts", "carried_sample", "MilvusSlot", "MODEL", "DIMS", "S3_MILVUS_PORT"]

MODEL, DIMS = "jina-embeddings-v3", 64
LOCAL_MILVUS_PORT, S3_MILVUS_PORT = 19530, 19541  # different client ports: a stale client fails, never mixes them up
_aliases = itertools.count()
_TOPICS = ["ocean tides and the moon", "baking sourdough bread at home", "training a neural network",
           "the history of the roman empire", "growing tomatoes in a greenhouse", "jazz piano chord voicings",
           "repairing a bicycle puncture", "black holes and general relativity", "learning to speak japanese",
           "marathon training for beginners"]


def sample_texts(n: int) -> list[str]:
    """n distinct texts, on a handful of topics, each with a unique word so every row is findable."""
    return [f"{_TOPICS[i % len(_TOPICS)]} note{i}x" for i in range(n)]


class MilvusSlot:
    """At most one embedded Milvus running in this session: ``use(name, make)`` stops any other first."""

    def __init__(self):
        self.servers: dict = {}

    def use(self, name: str, make):
        for other, srv in self.servers.items():
            if other != name and srv.running:
                srv.stop()
        server = self.servers.get(name)
        if server is None:
            server = self.servers[name] = make()
        if not server.running:
            server.start()
        return server

    def vacate(self) -> None:
        """Stop whichever server runs (a test's job is about to start its own)."""
        for srv in self.servers.values():
            if srv.running:
                srv.stop()

    def release(self, name: str) -> None:
        srv = self.servers.pop(name, None)
        if srv is not None and srv.running:
            srv.stop()


@pytest.fixture(scope="session")
def milvus_slot():
    slot = MilvusSlot()
    yield slot
    slot.vacate()


@pytest.fixture
def milvus_server(milvus_slot, tmp_path_factory):
    """The session's embedded Milvus on local storage, running (restarted if an S3-backed one had the slot)."""
    from jinabatch.load.server import EmbeddedServer

    return milvus_slot.use("local", lambda: EmbeddedServer(tmp_path_factory.mktemp("milvus-server"),
                                                           port=LOCAL_MILVUS_PORT))


@pytest.fixture(scope="module")
def milvus_s3_module(milvus_slot, s3_server, tmp_path_factory):
    from jinabatch.config import StorageSettings
    from jinabatch.load.server import BucketStorage, EmbeddedServer

    bucket = f"jb-milvus-{os.getpid()}-{next(_aliases)}"  # the server creates it
    make = lambda: EmbeddedServer(tmp_path_factory.mktemp("milvus-s3"), port=S3_MILVUS_PORT,  # noqa: E731
                                  bucket=BucketStorage(bucket, "files", StorageSettings()))
    yield make
    milvus_slot.release("s3")  # before the session's S3 server stops


@pytest.fixture
def milvus_s3_server(milvus_slot, milvus_s3_module):
    """An embedded Milvus whose data is in a bucket of the session's SeaweedFS, running (one per module)."""
    return milvus_slot.use("s3", milvus_s3_module)


@pytest.fixture
def milvus_config(tmp_path):
    def make(uri: str, out: str | Path, **milvus):
        milvus.setdefault("collection", f"t{next(_aliases)}_{tmp_path.name[-12:].replace('-', '_')}")
        return parse_config({"output": {"path": str(out)}, "milvus": {"uri": uri, **milvus},
                             "jina": {"base_url": "local", "model": MODEL, "dimensions": DIMS}})
    return make


def make_output(path: str | Path, texts: list[str], *, rows_per_shard: int = 100, id_type: str = "string",
                model: str = MODEL, dims: int = DIMS, extra: dict[str, list] | None = None,
                id_column: str = "id", task: str = "retrieval.passage",
                row_group_size: int | None = None) -> dict[str, np.ndarray]:
    """Write an embed output folder (each shard in row groups of ``row_group_size`` rows, one by default);
    returns {id: vector} for every row written."""
    path = Path(path)
    (path / "shards").mkdir(parents=True, exist_ok=True)
    vectors = embed(model, task, dims, texts)
    ids = [f"doc-{i:06d}" for i in range(len(texts))] if id_type == "string" else list(range(1000, 1000 + len(texts)))
    extra = _as_shard_columns(extra or {})
    columns = ["text", *extra]
    n_shards = 0
    for n_shards, start in enumerate(range(0, len(texts), rows_per_shard), 1):
        stop = min(start + rows_per_shard, len(texts))
        flat = pa.array(vectors[start:stop].reshape(-1), pa.float32())
        id_t = pa.string() if id_type == "string" else pa.int64()
        schema = pa.schema([pa.field(id_column, id_t), pa.field("embedding", pa.list_(pa.float32())),
                            pa.field("text", pa.string()), *(f for _, f in extra.values())])
        table = pa.Table.from_arrays([
            pa.array(ids[start:stop], id_t),
            pa.ListArray.from_arrays(pa.array(np.arange(0, (stop - start + 1) * dims, dims), pa.int32()), flat),
            pa.array(texts[start:stop], pa.string()),
            *(a.slice(start, stop - start) for a, _ in extra.values()),
        ], schema=schema)
        meta = {"model": model, "task": task, "dimensions": dims, "embedding_type": "base64",
                "normalized": True, "source_file": "corpus.parquet", "row_start": start, "row_stop": stop,
                "rows": stop - start, "fingerprint": "test", "shard": n_shards - 1, "id_column": id_column,
                "columns": columns}
        table = table.replace_schema_metadata({b"jinabatch": json.dumps(meta).encode()})
        pq.write_table(table, path / "shards" / f"shard-{n_shards - 1:05d}.parquet", row_group_size=row_group_size)
    (path / "shards" / "shard-00000.parquet.tmp-abc").write_bytes(b"half a file")  # must be ignored
    report = {"rows_in": len(texts), "rows_embedded": len(texts), "rows_dead_letter": 0, "shards_total": n_shards,
              "model": model, "task": task, "dimensions": dims, "id_column": id_column,
              "columns": columns, "fingerprint": "test", "finished": True}
    (path / "_report.json").write_text(json.dumps(report))
    return dict(zip(ids, vectors))


def _as_shard_columns(extra: dict) -> dict[str, tuple[pa.Array, pa.Field]]:
    """Each extra column as the embed stage's ShardWriter would write it: (array, field with metadata)."""
    out = {}
    for k, v in extra.items():
        a = v if isinstance(v, pa.Array) else pa.array(v)
        if shard_type(a.type) is None:  # not a carried type: written as given (the load must refuse it)
            out[k] = (a, pa.field(k, a.type))
            continue
        _, (f,) = shard_fields(pa.field("id", pa.string()), [pa.field(k, a.type)])
        out[k] = (to_shard(a), f)
    return out


T0, D0 = datetime(2024, 1, 1, tzinfo=timezone.utc), date(2023, 12, 1)


def carried_sample(n: int) -> tuple[dict[str, pa.Array], dict[str, list]]:
    """(corpus-typed columns, the values Milvus must give back) for rows 0..n-1.

    title (string): null every 4th row, "x" at rows 5 and 17; n (int64): null every 5th; score (float64, i/4):
    null every 3rd; flag (bool): null every 7th; published (timestamp[us, UTC], T0 + i days + i minutes + i µs):
    null every 6th; day (date32, D0 + i days): null every 8th.
    """
    def nul(every, f):
        return [None if i % every == 0 else f(i) for i in range(n)]

    title = nul(4, lambda i: "x" if i in (5, 17) else f"title {i}")
    ints, score, flag = nul(5, lambda i: i * 1000), nul(3, lambda i: i / 4), nul(7, lambda i: i % 2 == 0)
    ts = nul(6, lambda i: T0 + timedelta(days=i, minutes=i, microseconds=i))
    day = nul(8, lambda i: D0 + timedelta(days=i))
    columns = {"title": pa.array(title, pa.string()), "n": pa.array(ints, pa.int64()),
               "score": pa.array(score, pa.float64()), "flag": pa.array(flag, pa.bool_()),
               "published": pa.array(ts, pa.timestamp("us", "UTC")), "day": pa.array(day, pa.date32())}
    want = {"title": title, "n": ints, "score": score, "flag": flag,
            "published": [None if t is None else t.strftime("%Y-%m-%dT%H:%M:%S.%fZ") for t in ts],
            "day": [None if d is None else d.isoformat() for d in day]}
    return columns, want

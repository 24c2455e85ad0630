"""The worker's parts without a server: the row triage (a pure function), the request packer's carry between
groups, and a shard whose counts do not reconcile is never committed."""
from __future__ import annotations

import pyarrow as pa
import pytest

from jinabatch.config import parse_config
from jinabatch.embed.plan import Piece, Shard
from jinabatch.embed.reader import RowBatch
from jinabatch.embed.rows import PendingRows, ShardOutput
from jinabatch.embed.triage import CLEARLY_OVER, reason_key, triage
from jinabatch.embed.worker import RequestPacker
from jinabatch.errors import JinaBatchError
from jinabatch.jina.tokens import raw_estimate
from jinabatch.storage import Storage

LIMIT = 100


def _words(n: int) -> str:
    return "word " * n  # ~1.25 raw tokens a word


def _estimate(text: str) -> int:
    return round(raw_estimate(text))


def test_every_row_gets_one_verdict_in_the_documented_order():
    """Null id, duplicate, null/empty text, reuse, keep, alone and clearly-over rows, by position, each once."""
    ids = [None, 1, 2, 3, 4, 5, 6, 7]
    texts = ["x", "dup", None, "  ", "same as before", "fine", _words(100), "z" * int(LIMIT * 4 * CLEARLY_OVER + 40)]
    t = triage(ids, texts, range(10, 18), estimate=_estimate, limit=LIMIT, on_too_long="skip",
               duplicates={11: "duplicate id (first at a.parquet row 0)"}, reuse={14: 7 << 32})
    assert t.dead == {0: "null id", 1: "duplicate id (first at a.parquet row 0)", 2: "null text", 3: "empty text",
                      7: f"too long: about {_estimate(texts[7])} tokens > {LIMIT} (jina.on_too_long = skip)"}
    assert t.reused == {4: 7 << 32} and t.keep == [5]
    assert t.alone == [(6, f"too long (about {_estimate(texts[6])} tokens > {LIMIT})")] and t.refused is None
    assert t.raw_tokens == pytest.approx(sum(raw_estimate(texts[i]) for i in (5, 6, 7)))
    assert reason_key(t.dead[1]) == "duplicate id" and reason_key(t.dead[7]) == "too long"


def test_truncate_keeps_long_rows_and_counts_them_fail_refuses_the_first_clearly_over_row():
    texts = ["ok", _words(100), "z" * int(LIMIT * 4 * CLEARLY_OVER + 40), "never looked at"]
    kept = triage([1, 2, 3, 4], texts, range(4), estimate=_estimate, limit=LIMIT, on_too_long="truncate")
    assert kept.keep == [0, 1, 2, 3] and kept.truncated == 2 and not kept.dead and not kept.alone
    refused = triage([1, 2, 3, 4], texts, range(4), estimate=_estimate, limit=LIMIT, on_too_long="fail")
    assert refused.refused == (2, f"about {_estimate(texts[2])} tokens, over the model's {LIMIT}")
    assert refused.alone == [(1, f"too long (about {_estimate(texts[1])} tokens > {LIMIT})")]
    assert 3 not in refused.keep


def test_late_chunking_dead_letters_rows_without_a_document():
    t = triage([1, 2], ["a", "b"], range(2), estimate=_estimate, limit=LIMIT, on_too_long="truncate",
               documents=["d1", None], document_column="doc")
    assert t.keep == [0] and t.dead == {1: "null document (doc)"}


def _group(n: int, pos0: int = 0) -> PendingRows:
    cs = parse_config({}).corpus
    table = pa.table({"id": list(range(pos0, pos0 + n)), "text": [f"t{i}" for i in range(pos0, pos0 + n)]})
    return PendingRows([RowBatch(table, "f.parquet", pos0, pos0)], cs)


def test_the_packer_carries_the_last_partial_request_into_the_next_groups_rows():
    """Requests of 4 rows: 6 rows give one request and carry 2; with the next 6 they fill one more and the last 4 wait
    for ``drain``."""
    packer = RequestPacker(lambda texts: [list(range(i, min(i + 4, len(texts)))) for i in range(0, len(texts), 4)])
    a, b = _group(6), _group(6, pos0=6)
    first = packer.pack([(a, i) for i in range(6)])
    assert [[i for _, i in r] for r in first] == [[0, 1, 2, 3]] and a.held == 2
    second = packer.pack([(b, i) for i in range(6)])
    assert [[(g is a, i) for g, i in r] for r in second] == [[(True, 4), (True, 5), (False, 0), (False, 1)]]
    assert a.held == 0 and b.held == 4  # b's last four wait, although they would fill a request: more may come
    assert [i for _, i in packer.drain()] == [2, 3, 4, 5] and b.held == 0 and packer.drain() is None


def test_a_shard_whose_counts_do_not_reconcile_is_never_committed(tmp_path):
    out = Storage.open(tmp_path)
    shard = Shard(0, 0, 3, (Piece("f.parquet", "1-1", 0, 3),))
    output = ShardOutput(out, shard, pa.field("id", pa.int64()), [], {}, parse_config({}).corpus)
    g = _group(2)
    g.vectors = {0: [0.0, 1.0]}
    g.dead = {1: "null text"}
    output.write(g)
    with pytest.raises(JinaBatchError, match=r"shard-00000: 1 rows embedded \+ 1 dead-lettered is not the 3 rows"):
        output.commit()
    output.abort()
    assert not (tmp_path / "shards" / "shard-00000.parquet").exists() and not (tmp_path / "dead_letter").exists()

"""``jinabatch plan`` in batch mode: batches counted, tokens and cost estimated, the time left to Jina's queue."""
from __future__ import annotations

from corpus_gen import make_corpus
from jinabatch.config import parse_config
from jinabatch.embed.preview import format_preview, preview


def test_plan_in_batch_mode_counts_batches_and_says_the_time_is_jinas_queue(tmp_path):
    make_corpus(tmp_path / "c", files=2, rows_per_file=400, row_group_size=100)
    cfg = parse_config({"corpus": {"path": str(tmp_path / "c"), "columns": [], "rows_per_shard": 500},
                        "output": {"path": str(tmp_path / "out")},
                        "jina": {"api": "batch", "model": "jina-embeddings-v5-text-nano",
                                 "price_per_million_tokens": 1.0, "batch": {"inputs_per_batch": 200}}})
    p, _ = preview(cfg)
    assert p.batches == 3 + 2 and p.inputs_per_batch == 200  # shards of 500 and 300 rows
    text = format_preview(p)
    assert "batches  ~5 of at most 200 rows" in text and "depends on Jina's batch queue" in text
    assert "tokens   ~" in text and "cost     ~$" in text and "requests ~" not in text

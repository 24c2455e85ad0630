"""``jina.api = "batch"`` and ``[jina.batch]``: what the Batch Embeddings API cannot do is refused at config time,
naming the setting and the reason."""
from __future__ import annotations

import pytest

from jinabatch.config import load_config, parse_config
from jinabatch.errors import ConfigError

NANO = "jina-embeddings-v5-text-nano"


@pytest.mark.parametrize("model", ["jina-embeddings-v3", "jina-embeddings-v4", "jina-code-embeddings-0.5b",
                                   "some-model-the-table-does-not-know"])
def test_a_model_the_batch_api_does_not_serve_is_refused_naming_jina_model(model):
    with pytest.raises(ConfigError) as e:
        parse_config({"jina": {"api": "batch", "model": model}}, "job.toml")
    msg = str(e.value)
    assert "job.toml" in msg and "jina.model" in msg and model in msg
    assert "jina-embeddings-v5-text-small" in msg and NANO in msg and 'jina.api = "embeddings"' in msg


@pytest.mark.parametrize("jina, key", [({"embedding_type": "base64"}, "jina.embedding_type"),
                                       ({"embedding_type": "binary"}, "jina.embedding_type"),
                                       ({"late_chunking": True}, "jina.late_chunking")])
def test_fields_the_batch_body_lacks_are_refused_naming_them(jina, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.") + ": the Batch Embeddings API has no"):
        parse_config({"jina": {"api": "batch", "model": NANO, **jina}})


@pytest.mark.parametrize("batch, key", [({"inputs_per_batch": 10_001}, "jina.batch.inputs_per_batch"),
                                        ({"inputs_per_batch": 0}, "jina.batch.inputs_per_batch"),
                                        ({"max_in_flight": 0}, "jina.batch.max_in_flight"),
                                        ({"poll_initial": 5, "poll_max": 1}, "jina.batch.poll_max"),
                                        ({"pol_max": 1}, "jina.batch.pol_max")])
def test_batch_settings_out_of_range_name_their_key(batch, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_config({"jina": {"api": "batch", "model": NANO, "batch": batch}})


def test_batch_mode_sends_only_the_batch_body_fields_and_reads_floats():
    j = parse_config({"jina": {"api": "batch", "model": NANO, "embedding_type": "float", "dimensions": 256}}).jina
    assert j.request_fields == {"task", "dimensions", "normalized"}
    assert j.wire_type == "float" and j.embed_task == "retrieval.passage" and j.dim == 256


def test_batch_defaults_follow_jina_and_the_toml_table_is_read(tmp_path):
    default = parse_config({"jina": {"api": "batch", "model": NANO}}).jina.batch
    assert (default.inputs_per_batch, default.poll_initial, default.poll_max) == (10_000, 10.0, 30.0)
    p = tmp_path / "c.toml"
    p.write_text(f'[jina]\napi = "batch"\nmodel = "{NANO}"\n[jina.batch]\ninputs_per_batch = 500\n'
                 'poll_initial = 0.05\npoll_max = 0.2\nmax_in_flight = 2\n')
    b = load_config(p).jina.batch
    assert (b.inputs_per_batch, b.poll_initial, b.poll_max, b.max_in_flight) == (500, 0.05, 0.2, 2)


def test_the_sync_api_stays_the_default_and_ignores_the_batch_table():
    j = parse_config({"jina": {"model": "jina-embeddings-v3", "batch": {"inputs_per_batch": 10}}}).jina
    assert j.api == "embeddings" and j.wire_type == "base64"

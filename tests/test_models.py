"""The model table (jinabatch.models): Jina's current models with the figures Jina publishes and the fields each
takes, None where it publishes none, the query and document sides of each family, and what the job assumes of a
model the table does not know."""
from __future__ import annotations

import pytest

from jinabatch.models import (
    BATCH_FIELDS,
    BATCH_MAX_INPUTS,
    MODELS,
    REQUEST_FIELDS,
    ModelSpec,
    Sides,
    close_models,
    get_model,
    spec_of,
)

SMALL, NANO = "jina-embeddings-v5-text-small", "jina-embeddings-v5-text-nano"
CODE_S, CODE_L = "jina-code-embeddings-0.5b", "jina-code-embeddings-1.5b"
V5_TASKS = {"retrieval.query", "retrieval.passage", "text-matching", "classification", "clustering"}


def test_v5_small_and_nano_carry_the_published_figures_and_no_invented_input_cap():
    small, nano = MODELS[SMALL], MODELS[NANO]
    assert (small.max_tokens, small.default_dim, small.dims[0], small.dims[-1]) == (32768, 1024, 32, 1024)
    assert (nano.max_tokens, nano.default_dim, nano.dims[0], nano.dims[-1]) == (8192, 768, 32, 768)
    assert {32, 64, 128, 256, 512} <= set(small.dims) and {32, 64, 128, 256, 512} <= set(nano.dims)
    for spec in (small, nano):
        assert set(spec.tasks) == V5_TASKS and spec.document_task == "retrieval.passage"
        assert spec.fields == {"task", "dimensions", "late_chunking", "embedding_type", "normalized", "truncate"}
        assert spec.max_inputs is None  # Jina publishes no inputs-per-request cap for v5: the job learns it
        assert spec.batch_api and "late_chunking" in spec.notes  # the API decides whether it applies


def test_the_code_models_take_their_tasks_dimensions_embedding_type_and_truncate_only():
    tasks = {f"{t}.{side}" for t in ("nl2code", "code2code", "code2nl", "code2completion", "qa")
             for side in ("query", "passage")}
    for name in (CODE_S, CODE_L):
        spec = MODELS[name]
        assert set(spec.tasks) == tasks and spec.document_task == "nl2code.passage"
        assert spec.fields == {"task", "dimensions", "embedding_type", "truncate"}  # no normalized, no late_chunking
        assert spec.default_dim is None and spec.max_inputs is None  # not published in the API reference: learnt
        assert not spec.batch_api
    assert MODELS[CODE_S].dims == (64, 128, 256, 512, 896) and MODELS[CODE_L].dims == (128, 256, 512, 1024, 1536)


def test_v4_also_takes_return_multivector_and_only_v5_is_served_by_the_batch_api():
    assert "return_multivector" in MODELS["jina-embeddings-v4"].fields
    assert "return_multivector" not in MODELS["jina-embeddings-v3"].fields
    assert {n for n, s in MODELS.items() if s.batch_api} == {SMALL, NANO}
    assert set(BATCH_FIELDS) == {"model", "input", "task", "dimensions", "normalized"} and BATCH_MAX_INPUTS == 10_000


@pytest.mark.parametrize("model, task, want", [
    ("jina-embeddings-v3", None, ("retrieval.passage", "retrieval.query")),
    ("jina-embeddings-v4", None, ("retrieval.passage", "retrieval.query")),
    (SMALL, None, ("retrieval.passage", "retrieval.query")),
    (NANO, "retrieval.passage", ("retrieval.passage", "retrieval.query")),
    ("jina-embeddings-v4", "code.passage", ("code.passage", "code.query")),
    (CODE_S, None, ("nl2code.passage", "nl2code.query")),
    (CODE_L, "qa.passage", ("qa.passage", "qa.query")),
    (CODE_S, "code2code.query", ("code2code.passage", "code2code.query")),
    (SMALL, "text-matching", ("text-matching", "text-matching")),
    (SMALL, "clustering", ("clustering", "clustering")),
    (NANO, "classification", ("classification", "classification")),
    ("jina-embeddings-v3", "separation", ("separation", "separation")),
    ("jina-embeddings-v2-base-en", None, (None, None)),
    ("jina-embeddings-v6-someday", None, (None, None)),  # not in the table, no task set: none sent
    ("jina-embeddings-v6-someday", "retrieval.passage", ("retrieval.passage", "retrieval.query")),
])
def test_each_family_embeds_documents_and_queries_with_the_two_sides_of_its_task(model, task, want):
    assert spec_of(model).sides(task) == Sides(*want)


def test_a_model_the_table_does_not_know_is_open_on_every_figure_and_field():
    spec = spec_of("jina-embeddings-v6-text")
    assert spec == ModelSpec.unknown("jina-embeddings-v6-text") and not spec.known
    assert (spec.max_inputs, spec.max_tokens, spec.default_dim, spec.dims) == (None, None, None, None)
    assert spec.fields == set(REQUEST_FIELDS)
    assert spec.check_dimensions(640) == 640 and spec.check_dimensions(None) is None
    spec.check_task("anything.passage")  # the API decides
    with pytest.raises(ValueError, match="unknown model 'jina-embeddings-v6-text'"):
        get_model("jina-embeddings-v6-text")


def test_known_models_refuse_a_task_or_width_they_do_not_take():
    with pytest.raises(ValueError, match="takes no task"):
        MODELS["jina-embeddings-v2-base-en"].check_task("retrieval.passage")
    with pytest.raises(ValueError, match="accepts"):
        MODELS[CODE_S].check_task("retrieval.passage")
    with pytest.raises(ValueError, match=r"accepts dimensions \[64, 128, 256, 512, 896\]; got 1024"):
        MODELS[CODE_S].check_dimensions(1024)
    assert MODELS[CODE_S].check_dimensions(None) is None  # the API's answer tells


def test_a_misspelling_finds_the_model_it_meant():
    assert close_models("jina-embedings-v3")[0] == "jina-embeddings-v3"
    assert close_models("jina-embeddings-v5-small")[0] == SMALL
    assert close_models("completely-different") == []

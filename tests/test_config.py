"""Settings: every shipped config is valid, and a wrong one fails naming the file and the dotted key; what the
config asks of the model table (refused fields, the document task, a model the table does not know)."""
import logging
import pickle
from pathlib import Path

import pytest

from jinabatch.config import load_config, parse_config
from jinabatch.errors import ConfigError

CONFIGS = sorted(Path(__file__).resolve().parents[1].joinpath("configs").glob("*.toml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_is_valid(path):
    cfg = load_config(path)
    assert cfg.jina.dim > 0 and cfg.ray.workers <= cfg.limits.concurrency


def test_issue_keys_exist_with_their_names():
    cfg = parse_config({})
    for section, keys in {
        "corpus": ["path", "id_column", "text_column", "columns", "rows_per_shard"],
        "jina": ["base_url", "api_key_env", "model", "task", "dimensions", "late_chunking", "on_too_long"],
        "limits": ["rpm", "tpm", "concurrency"], "ray": ["address", "workers"], "output": ["path"],
        "milvus": ["uri", "token_env", "collection", "index", "mode", "keep_previous"],
    }.items():
        for k in keys:
            assert hasattr(getattr(cfg, section), k), f"{section}.{k}"
    assert cfg.jina.base_url == "https://api.jina.ai/v1" and cfg.limits.rpm == 500 and cfg.limits.tpm == 1_000_000
    assert cfg.jina.dim == 1024  # v3's default width when dimensions is left out


@pytest.mark.parametrize("data, key", [
    ({"jina": {"dimensions": 1000}}, "jina.dimensions"),
    ({"jina": {"task": "retrieval.passages"}}, "jina.task"),
    ({"jina": {"on_too_long": "drop"}}, "jina.on_too_long"),
    ({"limits": {"rpm": 0}}, "limits.rpm"),
    ({"corpus": {"rows_per_shard": -5}}, "corpus.rows_per_shard"),
    ({"corpus": {"text_colum": "body"}}, "corpus.text_colum"),
    ({"milvus": {"collection": "my-docs"}}, "milvus.collection"),
    ({"milvus": {"mode": "fast"}}, "milvus.mode"),
    ({"milvus": {"bucket": "s3://milvus-data"}}, "milvus.bucket"),  # a name, not a URI
    ({"milvus": {"bucket": "Milvus_Data"}}, "milvus.bucket"),
    ({"milvus": {"import_root": "jb"}}, "milvus.import_root"),  # copies into which bucket?
    ({"milvus": {"bucket": "milvus-data", "import_root": "s3://milvus-data/jb"}}, "milvus.import_root"),
])
def test_bad_setting_is_refused_naming_file_and_key(data, key):
    with pytest.raises(ConfigError) as e:
        parse_config(data, "job.toml")
    assert str(e.value).startswith("job.toml: invalid configuration:") and f"{key}:" in str(e.value)


def test_missing_file_and_bad_toml_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="nope.toml: config file not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[corpus\npath=1")
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        load_config(bad)


def test_v2_model_takes_no_dimensions_and_reports_its_fixed_width():
    cfg = parse_config({"jina": {"model": "jina-embeddings-v2-base-en"}})
    assert cfg.jina.dim == 768 and cfg.embedding_key()["task"] is None
    with pytest.raises(ConfigError, match="jina.dimensions"):
        parse_config({"jina": {"model": "jina-embeddings-v2-base-en", "dimensions": 512}})


def test_fingerprint_follows_what_decides_vectors_not_limits_or_paths():
    base = parse_config({})
    assert base.fingerprint() == parse_config({"limits": {"rpm": 10}, "output": {"path": "/x"}}).fingerprint()
    for change in ({"jina": {"dimensions": 512}}, {"jina": {"task": "text-matching"}},
                   {"jina": {"model": "jina-embeddings-v4", "dimensions": 1024}}, {"corpus": {"columns": ["t"]}},
                   {"jina": {"on_too_long": "skip"}}):
        assert parse_config(change).fingerprint() != base.fingerprint(), change


@pytest.mark.parametrize("jina, fingerprint", [
    ({}, "d7ea10856d8b9dbf"),
    ({"model": "jina-embeddings-v3", "task": "retrieval.passage", "dimensions": 256}, "4f251d7fea45f575"),
    ({"model": "jina-embeddings-v2-base-en"}, "b417ec3b97c294d0"),
    ({"model": "jina-embeddings-v4", "dimensions": 512, "late_chunking": True}, "979d42edf821eb5b"),
    ({"model": "jina-clip-v1"}, "33eca425620a37f0"),
])
def test_fingerprints_of_the_models_known_before_v5_are_unchanged(jina, fingerprint):
    """Outputs written before the table learnt v5 and the code models are resumed and reused as they were (the
    fingerprints were taken from the code before the change)."""
    assert parse_config({"jina": jina, "corpus": {"columns": ["title"]}}).fingerprint() == fingerprint


@pytest.mark.parametrize("jina, key", [
    ({"model": "jina-embeddings-v2-base-en", "task": "retrieval.passage"}, "jina.task"),
    ({"model": "jina-clip-v1", "task": "text-matching"}, "jina.task"),
    ({"model": "jina-code-embeddings-0.5b", "normalized": False}, "jina.normalized"),
    ({"model": "jina-code-embeddings-1.5b", "late_chunking": True}, "jina.late_chunking"),
    ({"model": "jina-code-embeddings-0.5b", "task": "retrieval.passage"}, "jina.task"),
    ({"model": "jina-embeddings-v5-text-nano", "dimensions": 1024}, "jina.dimensions"),
])
def test_a_field_the_model_refuses_is_caught_at_config_time_naming_the_setting(tmp_path, jina, key):
    path = tmp_path / "job.toml"
    path.write_text("[jina]\n" + "\n".join(f"{k} = {str(v).lower() if isinstance(v, bool) else repr(v)}"
                                           for k, v in jina.items()).replace("'", '"'))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value).startswith(f"{path}: invalid configuration: {key}: ")
    assert jina["model"] in str(e.value)


def test_each_family_embeds_the_corpus_with_its_document_task_when_none_is_set():
    task = {m: parse_config({"jina": {"model": m}}).embedding_key()["task"]
            for m in ("jina-embeddings-v3", "jina-embeddings-v5-text-small", "jina-code-embeddings-0.5b",
                      "jina-embeddings-v2-base-en")}
    assert task == {"jina-embeddings-v3": "retrieval.passage", "jina-embeddings-v5-text-small": "retrieval.passage",
                    "jina-code-embeddings-0.5b": "nl2code.passage", "jina-embeddings-v2-base-en": None}
    assert parse_config({"jina": {"model": "jina-code-embeddings-1.5b", "task": "qa.passage"}}).jina.embed_task == \
        "qa.passage"


def test_v5_takes_late_chunking_and_the_api_decides_whether_it_applies():
    j = parse_config({"jina": {"model": "jina-embeddings-v5-text-small", "dimensions": 256, "late_chunking": True},
                      "corpus": {"document_column": "doc"}}).jina
    assert "late_chunking" in j.request_fields and j.dim == 256 and j.context == 32768


def test_a_model_the_table_does_not_know_runs_with_one_warning_line_and_sends_only_what_was_written(caplog):
    with caplog.at_level(logging.WARNING, logger="jinabatch"):
        cfg = parse_config({"jina": {"model": "jina-embedings-v3-typo", "task": "retrieval.passage"}})
        parse_config({"jina": {"model": "jina-embedings-v3-typo"}})  # warned once per process
    lines = [r.getMessage() for r in caplog.records if "jina-embedings-v3-typo" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0] and "not in jinabatch's model table" in lines[0]
    assert "did you mean 'jina-embeddings-v3'" in lines[0]
    j = cfg.jina
    assert j.request_fields == {"task"}  # not dimensions, embedding_type, normalized, truncate: not written
    assert (j.embed_task, j.wire_type, j.dim, j.max_inputs) == ("retrieval.passage", "float", None, 512)
    assert cfg.embedding_key()["fields"] == ["task"] and cfg.embedding_key()["normalized"] is None
    written = parse_config({"jina": {"model": "jina-embeddings-v6", "dimensions": 640, "embedding_type": "base64",
                                     "normalized": False, "on_too_long": "truncate", "late_chunking": False}}).jina
    assert written.request_fields == {"dimensions", "embedding_type", "normalized", "truncate"}
    assert (written.dim, written.wire_type, written.embed_task) == (640, "base64", None)


def test_the_width_the_endpoint_answered_completes_the_key_and_travels_with_the_config():
    cfg = parse_config({"jina": {"model": "jina-code-embeddings-0.5b"}})
    assert cfg.jina.dim is None and cfg.embedding_key()["dimensions"] is None
    done = cfg.answered(896)
    assert done.jina.dim == 896 and done.embedding_key()["dimensions"] == 896
    assert "dimensions" not in done.jina.model_fields_set  # nothing more is sent: it only fills the width
    assert done.fingerprint() != cfg.fingerprint() and done.fingerprint() == cfg.answered(896).fingerprint()
    assert pickle.loads(pickle.dumps(done)).jina.dim == 896  # to the shard tasks, across Ray


def test_overrides_merge_into_sections(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[output]\npath = "a"\n[ray]\nworkers = 2\n')
    cfg = load_config(p, {"output": {"path": "b"}})
    assert cfg.output.path == "b" and cfg.ray.workers == 2 and cfg.source == str(p)


def test_milvus_bucket_settings_are_a_bare_bucket_name_and_key_prefixes():
    ms = parse_config({"milvus": {"bucket": "milvus-data", "import_root": "/staging/jb/", "root_path": "m1"}}).milvus
    assert (ms.bucket, ms.import_root, ms.root_path) == ("milvus-data", "staging/jb", "m1")
    assert parse_config({}).milvus.bucket is None  # a server on local storage, as before


def test_rayjob_gives_every_node_the_s3_credentials_from_a_secret_and_the_jina_key_to_the_head_only():
    """configs/rayjob.yaml: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and the optional AWS_ENDPOINT_URL) come from a
    Kubernetes Secret into the head and every worker container; no literal secret value and none in runtimeEnv."""
    import yaml

    job = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "rayjob.yaml").read_text())
    cluster = job["spec"]["rayClusterSpec"]
    pods = [("head", cluster["headGroupSpec"])] + [(g["groupName"], g) for g in cluster["workerGroupSpecs"]]
    for name, group in pods:
        (container,) = group["template"]["spec"]["containers"]
        env = {e["name"]: e for e in container.get("env", [])}
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
            assert "value" not in env[var] and env[var]["valueFrom"]["secretKeyRef"]["key"] == var, (name, var)
        assert env["AWS_ENDPOINT_URL"]["valueFrom"]["secretKeyRef"].get("optional") is True
        assert ("JINAAI_API_KEY" in env) == (name == "head"), name
    assert "AWS_" not in job["spec"]["runtimeEnvYAML"] and "JINAAI" not in job["spec"]["runtimeEnvYAML"]
    assert job["spec"]["entrypoint"].split()[2] == "configs/cluster.toml"
    assert load_config(Path(__file__).resolve().parents[1] / "configs" / "cluster.toml").output.path.startswith("s3://")

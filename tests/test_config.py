"""Settings: every shipped config is valid, and a wrong one fails naming the file and the dotted key."""
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
    ({"jina": {"model": "jina-embeddings-v9"}}, "jina.model"),
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

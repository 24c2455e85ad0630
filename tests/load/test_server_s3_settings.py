"""The embedded Milvus on object storage, before any server starts: the settings it is given (endpoint, bucket,
root path, region — never a credential), the credentials handed only to its process, and bad storage refused in
one line naming the bucket (never the secret) instead of a server that hangs for minutes."""
from __future__ import annotations

import time

import pytest

from fixtures_s3 import S3_KEY_ID, S3_SECRET
from jinabatch.config import MilvusSettings, StorageSettings
from jinabatch.errors import ConfigError, StorageError
from jinabatch.load import server as server_mod
from jinabatch.load.server import BucketStorage, EmbeddedServer


def test_server_settings_name_endpoint_bucket_root_and_region_but_no_credential(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:8333")
    got = BucketStorage("milvus-data", "m1", StorageSettings(region="eu-west-1")).milvus_config()
    assert {k: got[k] for k in ("common.storageType", "minio.address", "minio.port", "minio.useSSL",
                                "minio.bucketName", "minio.rootPath", "minio.region")} == {
        "common.storageType": "minio", "minio.address": "127.0.0.1", "minio.port": 8333, "minio.useSSL": "false",
        "minio.bucketName": "milvus-data", "minio.rootPath": "m1", "minio.region": "eu-west-1"}
    assert S3_SECRET not in str(got) and S3_KEY_ID not in str(got)
    tls = BucketStorage("b-1", settings=StorageSettings(endpoint="https://minio.example:9000")).milvus_config()
    assert (tls["minio.address"], tls["minio.port"], tls["minio.useSSL"]) == ("minio.example", 9000, "true")
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    aws = BucketStorage("b-1", settings=StorageSettings(region="us-west-2")).milvus_config()
    assert (aws["minio.address"], aws["minio.port"], aws["minio.useSSL"]) == ("s3.us-west-2.amazonaws.com", 443, "true")


def test_credentials_go_only_to_the_server_process_environment_and_temporary_ones_are_refused(monkeypatch):
    store = BucketStorage("b-1")
    assert store.server_env() == {"MINIO_ACCESSKEYID": S3_KEY_ID, "MINIO_SECRETACCESSKEY": S3_SECRET}
    monkeypatch.setenv("AWS_SESSION_TOKEN", "tok")
    with pytest.raises(ConfigError, match="cannot use temporary credentials"):
        store.server_env()
    monkeypatch.delenv("AWS_SESSION_TOKEN")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ConfigError, match="set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        store.server_env()
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    assert store.server_env() == {"MINIO_USEIAM": "true"}  # the instance role


def test_from_settings_puts_the_embedded_server_on_milvus_bucket_and_its_repr_shows_where(tmp_path):
    local = EmbeddedServer.from_settings(MilvusSettings(data_dir=str(tmp_path)))
    assert local.bucket is None and local.storage == str(tmp_path.resolve() / "data")
    s3 = EmbeddedServer.from_settings(MilvusSettings(data_dir=str(tmp_path), bucket="milvus-data", root_path="x"),
                                      StorageSettings(endpoint="http://127.0.0.1:1"))
    assert s3.storage == "s3://milvus-data/x" and repr(s3) == "EmbeddedServer('http://127.0.0.1:19530', " \
                                                              "data='s3://milvus-data/x')"


@pytest.mark.slow
@pytest.mark.parametrize("case", ["bad_secret", "dead_endpoint"])
def test_unusable_bucket_storage_is_refused_at_once_naming_the_bucket_before_any_server_starts(
        case, s3_server, monkeypatch, tmp_path):
    """A wrong secret would leave Milvus waiting for readiness for 3 minutes; the check before starting says it in
    one line naming milvus.bucket — never the secret — and no Milvus process is spawned."""
    settings = StorageSettings(connect_timeout=1, request_timeout=3, max_attempts=1)
    if case == "bad_secret":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-for-this-test-5678")
    else:
        settings = settings.model_copy(update={"endpoint": "http://127.0.0.1:9"})

    def never(env):
        raise AssertionError("a Milvus server was started")

    monkeypatch.setattr(server_mod, "_milvus_server", never)
    server = EmbeddedServer(tmp_path / "m", 19599, BucketStorage(s3_server.bucket(), "files", settings))
    t0 = time.monotonic()
    with pytest.raises(StorageError) as e:
        server.start()
    msg = str(e.value)
    assert time.monotonic() - t0 < 30 and "\n" not in msg
    assert msg.startswith(f"milvus.bucket = '{server.bucket.bucket}' (the embedded Milvus's storage): s3://")
    assert ("AWS_SECRET_ACCESS_KEY" if case == "bad_secret" else "AWS_ENDPOINT_URL") in msg
    assert S3_SECRET not in msg and "wrong-secret" not in msg


@pytest.mark.slow
def test_plan_time_check_of_an_embedded_server_on_a_bucket_refuses_bad_credentials_without_starting_it(
        s3_server, monkeypatch, tmp_path):
    """check_load_target (what jobs/run.py calls before any request) reaches milvus.bucket with the job's
    credentials; the embedded server is neither started nor needed for that, and a missing bucket is fine."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from jinabatch.load.precheck import check_load_target

    pq.write_table(pa.table({"id": ["a"], "text": ["t"], "title": ["x"]}), tmp_path / "a.parquet")
    ms = MilvusSettings(uri="embedded", port=19598, bucket="jb-not-created-yet", data_dir=str(tmp_path / "never"))
    check_load_target({"title": pa.string()}, ms, files=[str(tmp_path / "a.parquet")], output=str(tmp_path / "o"))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-for-this-test-5678")
    with pytest.raises(StorageError, match=r"^milvus\.bucket = 'jb-not-created-yet' \(the embedded Milvus's storage\)"):
        check_load_target({"title": pa.string()}, ms, files=[str(tmp_path / "a.parquet")], output=str(tmp_path / "o"))
    assert not (tmp_path / "never").exists()


def test_a_session_token_is_refused_at_plan_time_for_the_embedded_server_on_a_bucket(monkeypatch):
    """Temporary credentials cannot reach the embedded Milvus 2.3 (its MinIO client has no session token):
    check_load_target refuses them naming AWS_SESSION_TOKEN and milvus.bucket, before anything is probed or
    started; a remote server on a bucket is not concerned (the job's own clients use the token)."""
    import pyarrow as pa

    from jinabatch.load.precheck import check_load_target
    from jinabatch.load.target import ServerInfo

    monkeypatch.setenv("AWS_SESSION_TOKEN", "FQoGZXIvYXdzEBYaDTemporary")
    old = ServerInfo.of("server", "v2.3.5-lite")
    with pytest.raises(ConfigError, match=r"milvus\.bucket = 'milvus-data' with uri = \"embedded\": "
                                          r"AWS_SESSION_TOKEN is set.*cannot use temporary credentials") as e:
        check_load_target({"title": pa.string()}, MilvusSettings(uri="embedded", bucket="milvus-data"), server=old)
    assert "FQoGZXIvYXdz" not in str(e.value)
    check_load_target({"title": pa.string()}, MilvusSettings(uri="http://m:19530", bucket="milvus-data"), server=old)


def test_jobs_plan_with_a_session_token_and_the_embedded_server_on_a_bucket_exits_1_in_seconds(tmp_path, jina_key):
    """The job as a user runs it: one line naming the setting, exit code 1, no Milvus started."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.parquet as pq

    from fixtures_ray import base_config
    from procs import job_env, toml_of

    (tmp_path / "c").mkdir()
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["one", "two"]}), tmp_path / "c" / "a.parquet")
    data = base_config(tmp_path / "c", tmp_path / "out", "local", corpus={"columns": []})
    data["milvus"] = {"uri": "embedded", "bucket": "milvus-data", "data_dir": str(tmp_path / "milvus"), "port": 19596}
    (tmp_path / "cfg.toml").write_text(toml_of(data))
    env = dict(job_env(jina_key), AWS_SESSION_TOKEN="FQoGZXIvYXdzEBYaDTemporary")
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[2] / "jobs" / "plan.py"),
                        str(tmp_path / "cfg.toml")], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and time.monotonic() - t0 < 60, p.stderr[-2000:]
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ConfigError: milvus.bucket = 'milvus-data'") and "AWS_SESSION_TOKEN" in last
    assert not (tmp_path / "milvus").exists() and json.dumps(p.stderr).count("FQoGZXIvYXdz") == 0


@pytest.mark.slow
def test_credentials_the_server_cannot_use_stop_its_start_in_seconds_not_after_the_readiness_wait(
        s3_server, milvus_slot, monkeypatch, tmp_path):
    """Credentials from a profile file: the job's check of the bucket passes with them (pyarrow reads profiles),
    but the server signs with the AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY pair only and the store refuses its
    bucket checks. Its log says so within seconds; the start is given up then, naming milvus.bucket — not after
    the package's 180 s readiness wait — and no process or server id file is left behind."""
    creds = tmp_path / "credentials"
    creds.write_text(f"[default]\naws_access_key_id = {S3_KEY_ID}\naws_secret_access_key = {S3_SECRET}\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    bucket = BucketStorage(s3_server.bucket(), "files")
    bucket.check()  # what runs before the start passes: the job itself can use the bucket
    milvus_slot.vacate()  # one embedded Milvus per machine
    before = set(server_mod.SERVER_ID_DIR.glob("server_id_*"))
    server = EmbeddedServer(tmp_path / "m", 19595, bucket)
    t0 = time.monotonic()
    with pytest.raises(StorageError) as e:
        server.start()
    took = time.monotonic() - t0
    msg = str(e.value)
    assert took < 60, f"the start was given up after {took:.0f}s"
    assert msg.startswith(f"milvus.bucket = '{bucket.bucket}' (the embedded Milvus's storage): the server could "
                          "not use it (") and "failed checks, the last: " in msg and "\n" not in msg
    assert S3_SECRET not in msg and S3_KEY_ID not in msg
    assert not server.running and set(server_mod.SERVER_ID_DIR.glob("server_id_*")) <= before

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

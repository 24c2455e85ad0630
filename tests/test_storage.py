"""Storage: one API over a local folder, a real S3-compatible server (SeaweedFS) and fsspec's memory store."""
from __future__ import annotations

import pickle

import boto3
import pytest

from fixtures_s3 import S3_KEY_ID, S3_SECRET
from jinabatch.config import StorageSettings
from jinabatch.errors import StorageError
from jinabatch.storage import Storage


@pytest.fixture(params=["local", "s3", "memory"])
def store(request, tmp_path):
    if request.param == "local":
        return Storage.open(tmp_path / "root")
    if request.param == "memory":
        pytest.importorskip("fsspec")
        return Storage.open(f"memory://jb-{tmp_path.name}/root")
    bucket = request.getfixturevalue("s3_bucket")()
    return Storage.open(f"s3://{bucket}/root")


def test_written_bytes_read_back_listed_sorted_with_hidden_files_filtered(store, tmp_path):
    store.write_bytes("b/two.parquet", b"2")
    store.write_bytes("a/one.parquet", b"11")
    store.write_bytes("a/_meta.json", b"{}")
    store.write_json("x/.hidden/z.json", {"k": 1})
    assert store.read_bytes("a/one.parquet") == b"11"
    assert store.read_json("x/.hidden/z.json") == {"k": 1}
    assert store.read_bytes("missing") is None
    assert [f.path for f in store.list()] == ["a/_meta.json", "a/one.parquet", "b/two.parquet", "x/.hidden/z.json"]
    assert [f.path for f in store.list(hidden=False)] == ["a/one.parquet", "b/two.parquet"]
    assert [f.path for f in store.list("a", pattern="*.parquet")] == ["a/one.parquet"]
    assert store.list("no/such/folder") == []
    st = store.stat("a/one.parquet")
    assert st.size == 2 and st.fingerprint.startswith("2-")
    assert store.stat("a") is None and store.is_dir("a")


def test_upload_moves_a_finished_local_file_to_its_final_key_and_delete_removes_it(store):
    tmp = store.local_temp("shards/s.parquet")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_bytes(b"x" * (12 * 1024 * 1024))  # over the multipart threshold
    store.upload(tmp, "shards/s.parquet")
    assert not tmp.exists()
    assert store.stat("shards/s.parquet").size == 12 * 1024 * 1024
    store.delete_many(["shards/s.parquet"])
    assert store.stat("shards/s.parquet") is None
    store.delete("shards/s.parquet")  # deleting what is gone is fine


def test_storage_pickles_as_its_uri_without_any_credential(store):
    data = pickle.dumps(store)
    assert S3_SECRET.encode() not in data and S3_KEY_ID.encode() not in data
    again = pickle.loads(data)
    assert again.uri == store.uri and again.kind == store.kind


def test_abandoned_multipart_uploads_under_the_prefix_are_aborted(s3_bucket):
    bucket = s3_bucket()
    client = boto3.client("s3")
    client.create_multipart_upload(Bucket=bucket, Key="out/shards/shard-00001.parquet")  # a killed worker's
    client.create_multipart_upload(Bucket=bucket, Key="elsewhere/keep.bin")
    store = Storage.open(f"s3://{bucket}/out")
    assert store.abort_multipart_uploads("shards") == 1
    left = [u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]
    assert left == ["elsewhere/keep.bin"]
    assert store.stat("shards/shard-00001.parquet") is None


def test_server_side_copy_between_buckets_on_one_endpoint(s3_bucket):
    a, b = Storage.open(f"s3://{s3_bucket()}/src"), Storage.open(f"s3://{s3_bucket()}/dst")
    a.write_bytes("f.bin", b"payload")
    b.copy_within(a, "f.bin", "g.bin")
    assert b.read_bytes("g.bin") == b"payload"


@pytest.mark.parametrize("case", ["no_bucket", "bad_credentials", "dead_endpoint"])
def test_unreachable_store_is_one_line_naming_the_uri_never_the_secret(case, s3_bucket, monkeypatch):
    bucket = "no-such-bucket-jb" if case == "no_bucket" else s3_bucket()
    settings = StorageSettings(connect_timeout=1, request_timeout=3, max_attempts=1)
    if case == "bad_credentials":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-for-test-0000")
    if case == "dead_endpoint":
        settings = StorageSettings(endpoint="http://127.0.0.1:9", connect_timeout=1, request_timeout=3, max_attempts=1)
    store = Storage.open(f"s3://{bucket}/corpus", settings)
    with pytest.raises(StorageError) as e:
        store.check("corpus.path")
    msg = str(e.value)
    assert msg.startswith(f"corpus.path = s3://{bucket}/corpus: ") and "\n" not in msg
    assert S3_SECRET not in msg and "wrong-secret" not in msg
    hint = {"no_bucket": "create the bucket", "bad_credentials": "AWS_ACCESS_KEY_ID",
            "dead_endpoint": "AWS_ENDPOINT_URL"}[case]
    assert hint in msg


def test_config_refuses_credentials_in_the_storage_section():
    from jinabatch.config import parse_config
    from jinabatch.errors import ConfigError

    with pytest.raises(ConfigError, match="storage.secret_access_key: credentials are never read from the config"):
        parse_config({"storage": {"secret_access_key": "x"}})


def test_local_paths_and_file_uris_are_the_same_root(tmp_path):
    assert Storage.open(f"file://{tmp_path}").root == Storage.open(str(tmp_path)).root == str(tmp_path.resolve())
    assert Storage.open(tmp_path).contains(Storage.open(tmp_path / "out"))
    assert not Storage.open(tmp_path / "out").contains(Storage.open(tmp_path))


def test_delete_many_on_s3_removes_more_than_one_requests_worth(s3_bucket):
    """S3 deletes at most 1,000 keys a request: 1,005 objects on SeaweedFS all go, a missing one is no error."""
    store = Storage.open(f"s3://{s3_bucket()}/root")
    client = store._s3_client()
    names = [f"shards/s-{i:05d}.parquet" for i in range(1005)]
    for n in names:
        client.put_object(Bucket=store.bucket, Key=f"root/{n}", Body=b"x")
    store.delete_many(names + ["shards/never-there.parquet"])
    assert store.list("shards") == []


def test_delete_many_names_the_object_s3_would_not_delete(s3_bucket, monkeypatch):
    """A delete_objects answer listing keys it could not delete (e.g. AccessDenied) is an error naming one of
    them, never silence: a stale shard left behind would be loaded with the new ones."""
    store = Storage.open(f"s3://{s3_bucket()}/root")
    real = store._s3_client()

    class Refusing:
        def delete_objects(self, **kw):
            keys = [o["Key"] for o in kw["Delete"]["Objects"]]
            real.delete_objects(**{**kw, "Delete": {"Objects": [{"Key": k} for k in keys[1:]], "Quiet": True}})
            return {"Errors": [{"Key": keys[0], "Code": "AccessDenied", "Message": "Access Denied"}]}

    for n in ("a.parquet", "b.parquet"):
        store.write_bytes(f"shards/{n}", b"x")
    monkeypatch.setattr(store, "_s3_client", lambda: Refusing())
    with pytest.raises(StorageError, match=r"cannot delete 1 object\(s\), e\.g\. s3://.*/root/shards/a\.parquet: "
                                           r"AccessDenied.*delete permission"):
        store.delete_many(["shards/a.parquet", "shards/b.parquet"])
    assert [f.path for f in store.list("shards")] == ["shards/a.parquet"]

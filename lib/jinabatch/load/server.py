"""The embedded Milvus server: a real Milvus standalone (the ``milvus`` package) started by the job.

``uri = "embedded"`` means: use the Milvus listening on ``127.0.0.1:{milvus.port}`` if one is already
there (someone keeps it running: ``python jobs/load.py CONFIG --serve``), otherwise start one on
``milvus.data_dir`` for the length of the job and stop it at the end. The data dir is reused, so
collections persist from run to run. Only one such server can run per machine (the package binds
fixed internal ports), which is also why an already-running one is reused rather than started twice.

**Storage.** By default the server keeps its data on local disk under ``data_dir`` and imports files by
their absolute path on this machine. With ``milvus.bucket`` it keeps its segments in that S3/MinIO bucket
instead (``common.storageType = "minio"``, under ``milvus.root_path``; its metadata and message queue stay
in ``data_dir``), creates the bucket if it is missing, and imports files by object key inside it — as a
Milvus deployment on object storage does. The endpoint is ``[storage] endpoint`` / ``$AWS_ENDPOINT_URL``
(AWS itself when neither is set), the region ``[storage] region`` / ``$AWS_REGION``. The credentials are
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` from this process's environment, handed to the server
process only in *its* environment (Milvus reads ``MINIO_ACCESSKEYID`` / ``MINIO_SECRETACCESSKEY`` over its
config file): they are never written to the ``milvus.yaml`` it is started with, nor logged. Without them the
server uses the instance role (``minio.useIAM``). Temporary credentials (``AWS_SESSION_TOKEN``) are refused
at plan time (``load.precheck``) and again here: Milvus 2.3's MinIO client signs with a static key and secret
and an empty session token (``credentials.NewStaticV4(key, secret, "")``), and has no setting for one. The
bucket is reached with the job's credentials before the server starts, and while it starts its log is watched:
a store that refuses the server's own bucket checks stops the start within seconds, never after the package's
180 s readiness wait — as does a server process that exits while starting (another embedded Milvus holding the
fixed internal ports), with the error from its log.

``EmbeddedServer`` is the one place that starts and stops it; the test session's ``milvus_server``
fixture is started through it too, so the job's embedded path is tested by pointing a config at it.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..config import MilvusSettings, StorageSettings
from ..errors import ConfigError, LoadError, StorageError

__all__ = ["EmbeddedServer", "BucketStorage", "embedded_uri", "milvus_answers", "SERVER_ID_DIR"]

log = logging.getLogger(__name__)

STOP_TIMEOUT = 20  # seconds a graceful stop may take before the server is killed
BUCKET_CHECK_FAILED = "failed to check blob bucket exist"  # what Milvus 2.3 logs when its store refuses it
FAILED_BUCKET_CHECKS = 3  # of them before its start is given up (one failure may be a store still starting)
SERVER_ID_DIR = Path("/tmp/milvus")  # the server writes server_id_<pid> here, whatever its data dir
# Seconds an etcd session of the server's nodes outlives their process (Milvus's default is 30). A server started on
# the same data dir before a stopped one's sessions have expired hands an import to the stopped data node, and that
# import stays "Started" until Milvus expires it 15 min later (seen in make backfill: Milvus stopped, restarted
# 20 s later, the first import of the next load hung). Shorter sessions → shorter waits at a quick restart.
SESSION_TTL = 10
STATE_FILE = ".jinabatch-server.json"  # in data_dir: when the last server stopped, or that it never did


def milvus_answers(port: int, host: str = "127.0.0.1", timeout: float = 3.0) -> bool:
    """True if a Milvus server answers on host:port (a TCP listener that is not Milvus → LoadError)."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            pass
    except OSError:
        return False
    from pymilvus import MilvusClient

    try:
        client = MilvusClient(uri=f"http://{host}:{port}", timeout=timeout)
        client.get_server_version()
        client.close()
        return True
    except Exception as e:
        raise LoadError(f"{host}:{port} is taken by something that does not answer as Milvus ({type(e).__name__}); "
                        "stop it or set milvus.port to a free port") from None


@dataclass(frozen=True)
class BucketStorage:
    """The embedded server's data in an S3/MinIO bucket: ``bucket`` under ``root_path``, reached through the
    endpoint and region of ``settings`` and the AWS_* credentials of the environment."""

    bucket: str
    root_path: str = "files"
    settings: StorageSettings = field(default_factory=StorageSettings)

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.root_path}"

    def milvus_config(self) -> dict[str, Any]:
        """The server's ``minio.*`` / ``common.storageType`` settings — no credentials."""
        from ..storage import s3_endpoint, s3_region

        endpoint, region = s3_endpoint(self.settings), s3_region(self.settings)
        if endpoint:
            parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(f"storage.endpoint / AWS_ENDPOINT_URL = {endpoint!r}: the embedded Milvus needs "
                                  "an http(s)://host[:port] address of the S3 store")
            ssl = parts.scheme == "https"
            host, port = parts.hostname, parts.port or (443 if ssl else 80)
        else:  # AWS S3 itself
            ssl, host, port = True, f"s3.{region}.amazonaws.com", 443
        return {"common.storageType": "minio", "minio.address": host, "minio.port": port,
                "minio.useSSL": "true" if ssl else "false", "minio.bucketName": self.bucket,
                "minio.rootPath": self.root_path, "minio.region": region,
                # placeholders in the written milvus.yaml: the server process gets the real values in its environment
                "minio.accessKeyID": "from-environment", "minio.secretAccessKey": "from-environment"}

    def check_credentials(self) -> None:
        """ConfigError, before anything starts, for credentials the server could not use: temporary ones (Milvus
        2.3's MinIO client signs with a static key and secret and an empty session token, and has no setting
        for one: with AWS_SESSION_TOKEN it would be refused by the store and never become ready), or half a pair.
        Reads only the environment; ``jobs/run.py`` and ``jobs/plan.py`` call it through ``load.precheck``."""
        key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
        if os.environ.get("AWS_SESSION_TOKEN"):
            raise ConfigError(f"milvus.bucket = {self.bucket!r} with uri = \"embedded\": AWS_SESSION_TOKEN is set, "
                              "but the embedded Milvus (2.3) cannot use temporary credentials (its MinIO client has "
                              "no session token); give it long-lived AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or an "
                              "instance role (none of the three variables set), or unset milvus.bucket to keep its "
                              "data on local disk")
        if bool(key) != bool(secret):
            raise ConfigError("milvus.bucket: set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for the embedded "
                              "Milvus's bucket (or neither, to use the instance role)")

    def server_env(self) -> dict[str, str]:
        """What the server process's environment must hold: the credentials (never a file, never a log)."""
        self.check_credentials()
        key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
        if not key:
            return {"MINIO_USEIAM": "true"}
        return {"MINIO_ACCESSKEYID": key, "MINIO_SECRETACCESSKEY": secret}

    def check(self) -> None:
        """Reach the endpoint with the credentials before starting (a server with a wrong secret never becomes
        ready: it would hang for minutes); a missing bucket is fine, the server creates it."""
        from ..storage import Storage

        try:
            Storage.open(f"s3://{self.bucket}", self.settings).is_dir()
        except StorageError as e:
            raise StorageError(f"milvus.bucket = {self.bucket!r} (the embedded Milvus's storage): {e}") from None


class EmbeddedServer:
    """A Milvus standalone on ``data_dir`` serving ``127.0.0.1:port``; ``start()`` blocks until ready.
    ``bucket``: keep its data in that S3/MinIO bucket instead of ``data_dir/data``."""

    def __init__(self, data_dir: str | Path, port: int = 19530, bucket: BucketStorage | None = None):
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.bucket = bucket
        self._server = None
        self._pid: int | None = None

    @classmethod
    def from_settings(cls, ms: MilvusSettings, storage: StorageSettings | None = None) -> "EmbeddedServer":
        bucket = BucketStorage(ms.bucket, ms.root_path, storage or StorageSettings()) if ms.bucket else None
        return cls(ms.data_dir, ms.port, bucket)

    def __repr__(self) -> str:
        return f"EmbeddedServer({self.uri!r}, data={self.storage!r})"

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def storage(self) -> str:
        """Where its data is: the local folder, or ``s3://bucket/root_path``."""
        return self.bucket.uri if self.bucket else str(self.data_dir / "data")

    @property
    def running(self) -> bool:
        return self._server is not None and self._server.running

    def start(self) -> "EmbeddedServer":
        stale_until = self._stale_sessions_until()
        config, env = {"common.session.ttl": SESSION_TTL}, {}
        if self.bucket is not None:
            config, env = {**config, **self.bucket.milvus_config()}, self.bucket.server_env()
            self.bucket.check()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        server = _milvus_server(env, watch_bucket=self.bucket is not None)
        server.set_base_dir(str(self.data_dir))
        server.listen_port = self.port
        for key, value in config.items():
            server.config.set(key, value)
        log.info("starting the embedded Milvus server on %s (data in %s)", self.uri, self.storage)
        try:
            server.start()
        except Exception as e:
            pid = server.server_proc.pid if server.server_proc else None
            server.stop()
            (SERVER_ID_DIR / f"server_id_{pid}").unlink(missing_ok=True)
            if isinstance(e, _BucketRefused):
                raise StorageError(f"milvus.bucket = {self.bucket.bucket!r} (the embedded Milvus's storage): the "
                                   f"server could not use it ({e}) and was stopped; it signs with AWS_ACCESS_KEY_ID / "
                                   "AWS_SECRET_ACCESS_KEY only (no session token, profile or SSO credentials) — see "
                                   f"{self.data_dir / 'logs'}") from None
            raise LoadError(f"the embedded Milvus server did not start ({e}); see {self.data_dir / 'logs'} — "
                            "another embedded Milvus on this machine blocks its internal ports"
                            + (f", or it cannot use {self.bucket.uri}" if self.bucket else "")) from None
        finally:
            env.clear()  # the credentials were needed only to spawn the process
        self._server = server
        self._pid = server.server_proc.pid if server.server_proc else None
        self.port = server.listen_port  # the package moves to the next free port if ours was taken
        self._write_state({"running_since": time.time(), "session_ttl": SESSION_TTL})
        wait = stale_until - time.time()
        if wait > 0:
            log.info("waiting %.0f s for the previous server's sessions to expire (Milvus would hand an import to "
                     "its stopped data node)", wait)
            time.sleep(wait)
        return self

    def _stale_sessions_until(self) -> float:
        """Until when sessions of an earlier server on this data dir may still be registered: its stop time plus
        its session TTL; a server that never recorded a stop (killed, or started by an older version) may have
        renewed them just now. 0 for a data dir no server has used."""
        if not (self.data_dir / "data" / "etcd.data").exists():
            return 0.0
        try:
            state = json.loads((self.data_dir / STATE_FILE).read_text())
        except (OSError, ValueError):
            state = {}
        ttl = float(state.get("session_ttl", 30)) + 2  # + the keepalive's slack
        stopped = state.get("stopped_at")
        return float(stopped) + ttl if stopped is not None else time.time() + ttl

    def _write_state(self, state: dict[str, float]) -> None:
        try:
            (self.data_dir / STATE_FILE).write_text(json.dumps(state))
        except OSError as e:  # only costs the next start a wait
            log.warning("could not record the embedded Milvus's state in %s: %s", self.data_dir, e)

    def stop(self) -> None:
        if self._server is not None:
            log.info("stopping the embedded Milvus server on %s", self.uri)
            proc = self._server.server_proc
            if proc is not None:
                # Milvus 2.3.5-lite does not exit on a signal while a collection is loaded, and a killed server
                # leaves etcd sessions that make the next start wait for them to expire (~a minute): release
                # every collection first, then SIGINT — it exits at once and restarts in seconds.
                self._release_all()
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    log.warning("the embedded Milvus server did not stop in %d s; killing it", STOP_TIMEOUT)
            self._server.stop()  # kills if still running, closes its log files
            self._server = None
            self._write_state({"stopped_at": time.time(), "session_ttl": SESSION_TTL})
        if self._pid is not None:  # written outside data_dir by the server; nothing reads it after exit
            (SERVER_ID_DIR / f"server_id_{self._pid}").unlink(missing_ok=True)
            self._pid = None

    def _release_all(self) -> None:
        from pymilvus import MilvusClient

        try:
            client = MilvusClient(uri=self.uri, timeout=10)
            for name in client.list_collections():
                client.release_collection(name)
            client.close()
        except Exception as e:  # stopping must go on; at worst the next start is slow
            log.warning("could not release collections before stopping Milvus: %s", e)

    def __enter__(self) -> "EmbeddedServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _BucketRefused(Exception):
    """The server's own checks of its bucket keep failing: it would retry until the readiness wait times out."""


class _Exited(Exception):
    """The server process ended while its start was awaited (the package would wait the whole 180 s for it)."""


def _logged(log_file: Path, marker: str) -> tuple[int, str]:
    """(lines of the server's log holding ``marker``, the ``error`` the last of them names — scrubbed of the AWS
    key and secret, whatever the server logs)."""
    try:
        lines = [line for line in log_file.read_text(errors="replace").splitlines() if marker in line]
    except OSError:
        return 0, ""
    found = re.search(r'\[error="([^"]*)"\]', lines[-1]) if lines else None
    error = found.group(1) if found else ""
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        if os.environ.get(var):
            error = error.replace(os.environ[var], "***")
    return len(lines), error


def _milvus_server(env: dict[str, str], watch_bucket: bool = False):
    """The package's ``MilvusServer``, with ``env`` added to the environment of the process it spawns.

    ``MilvusServer.start`` builds the child's environment from ``os.environ`` and passes it through
    ``prepend_path_to_envs`` (for LD_LIBRARY_PATH / DYLD_LIBRARY_PATH) just before spawning: the one hook that
    reaches it without putting the credentials into this process's own environment.

    The readiness wait (the package's, 180 s) is cut into 2 s steps. Between them: a server process that has
    ended (the package counts it as running and would wait the whole time — e.g. another embedded Milvus holds
    the fixed internal ports) ends the wait with ``_Exited`` and its log's last error; with ``watch_bucket``, a
    log showing the server's bucket check failing ``FAILED_BUCKET_CHECKS`` times (a store refusing its
    credentials: it retries for minutes and never becomes ready) ends it with ``_BucketRefused``. Seconds after
    the start, not 180 s."""
    from milvus import MilvusServer  # heavy import, only when a server is really started

    class _Server(MilvusServer):
        def prepend_path_to_envs(self, envs, name, val):  # see the docstring above
            super().prepend_path_to_envs(envs, name, val)
            envs.update(env)

        def wait_started(self, timeout=180000):
            deadline = time.monotonic() + timeout / 1000
            log_file = Path(self.config.base_data_dir) / "logs" / "milvus-stdout.log"  # truncated at each start
            while True:
                try:
                    return super().wait_started(timeout=2000)
                except TimeoutError:
                    if self.server_proc is not None and self.server_proc.poll() is not None:
                        error = _logged(log_file, "[ERROR]")[1] or "no error in its log"
                        raise _Exited(f"it exited with code {self.server_proc.returncode}: {error}") from None
                    failed, error = _logged(log_file, BUCKET_CHECK_FAILED) if watch_bucket else (0, "")
                    if failed >= FAILED_BUCKET_CHECKS:
                        raise _BucketRefused(f"{failed} failed checks, the last: {error}") from None
                    if time.monotonic() >= deadline:
                        raise TimeoutError(f"not ready after {timeout / 1000:.0f} s") from None

    return _Server()


@contextlib.contextmanager
def embedded_uri(server: EmbeddedServer) -> Iterator[str]:
    """The URI of the embedded server: reuse one already answering on its port, else own ``server`` for the block."""
    if milvus_answers(server.port):
        log.info("using the Milvus already running on 127.0.0.1:%d (left running; its storage is taken to be %s as "
                 "configured)", server.port, server.storage)
        yield f"http://127.0.0.1:{server.port}"
        return
    with server:
        yield server.uri

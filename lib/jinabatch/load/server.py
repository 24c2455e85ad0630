"""The embedded Milvus server: a real Milvus standalone (the ``milvus`` package) started by the job.

``uri = "embedded"`` means: use the Milvus listening on ``127.0.0.1:{milvus.port}`` if one is already
there (someone keeps it running: ``python jobs/load.py CONFIG --serve``), otherwise start one on
``milvus.data_dir`` for the length of the job and stop it at the end. The data dir is reused, so
collections persist from run to run. Only one such server can run per machine (the package binds
fixed internal ports), which is also why an already-running one is reused rather than started twice.

``EmbeddedServer`` is the one place that starts and stops it; the test session's ``milvus_server``
fixture is started through it too, so the job's embedded path is tested by pointing a config at it.
"""
from __future__ import annotations

import contextlib
import logging
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

from ..errors import LoadError

__all__ = ["EmbeddedServer", "embedded_uri", "milvus_answers"]

log = logging.getLogger(__name__)

STOP_TIMEOUT = 20  # seconds a graceful stop may take before the server is killed


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


class EmbeddedServer:
    """A Milvus standalone on ``data_dir`` serving ``127.0.0.1:port``; ``start()`` blocks until ready."""

    def __init__(self, data_dir: str | Path, port: int = 19530):
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self._server = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None and self._server.running

    def start(self) -> "EmbeddedServer":
        from milvus import (
            MilvusServer,  # heavy import, only when a server is really started
        )

        self.data_dir.mkdir(parents=True, exist_ok=True)
        server = MilvusServer()
        server.set_base_dir(str(self.data_dir))
        server.listen_port = self.port
        log.info("starting the embedded Milvus server on %s (data in %s)", self.uri, self.data_dir)
        try:
            server.start()
        except Exception as e:
            server.stop()
            raise LoadError(f"the embedded Milvus server did not start ({e}); see {self.data_dir / 'logs'} — "
                            "another embedded Milvus on this machine blocks its internal ports") from None
        self._server = server
        self.port = server.listen_port  # the package moves to the next free port if ours was taken
        return self

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


@contextlib.contextmanager
def embedded_uri(data_dir: str | Path, port: int) -> Iterator[str]:
    """The URI of the embedded server: reuse one already answering on ``port``, else own one for the block."""
    if milvus_answers(port):
        log.info("using the Milvus already running on 127.0.0.1:%d (left running)", port)
        yield f"http://127.0.0.1:{port}"
        return
    with EmbeddedServer(data_dir, port) as server:
        yield server.uri

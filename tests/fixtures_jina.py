"""Fixtures for the local Jina-compatible server (``jinabatch.local_api.server``).

* ``jina_key`` — the session's API key, a distinctive string so leak tests can grep for it.
* ``jina_server`` — one started ``LocalServer`` for the session: no limits, no faults. Tests may
  read its stats but must not change its config (use ``make_jina_server`` for that).
* ``make_jina_server(**settings)`` — a factory of started servers with the given ``ServerSettings``
  fields (``rpm=60``, ``faults=("drop",)``, ``mode="process"``...), keyed with ``jina_key``;
  all stopped at teardown.
"""
from __future__ import annotations

import pytest

from jinabatch.local_api.server import LocalServer, ServerSettings

__all__ = ["jina_key", "jina_server", "make_jina_server", "JINA_TEST_KEY"]

JINA_TEST_KEY = "jina_test_SECRET_4f9c2e71b0d8_must_never_be_logged"


@pytest.fixture(scope="session")
def jina_key() -> str:
    return JINA_TEST_KEY


@pytest.fixture(scope="session")
def jina_server(jina_key):
    with LocalServer(ServerSettings(api_keys=frozenset({jina_key}))) as srv:
        yield srv


@pytest.fixture
def make_jina_server(jina_key):
    started: list[LocalServer] = []

    def make(mode: str = "thread", **settings) -> LocalServer:
        settings.setdefault("api_keys", frozenset({jina_key}))
        srv = LocalServer(ServerSettings(**settings), mode=mode).start()
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()

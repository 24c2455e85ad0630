"""Services a job starts for itself: the bundled Jina-compatible server and a local Ray.

``jina_endpoint(config)`` yields the base URL and key to use: with ``jina.base_url = "local"`` it starts
the bundled server (enforcing the config's ``[limits]`` like the real API would) under a fresh random
key and stops it afterwards; otherwise it resolves the key from ``jina.api_key_env`` (or JINA_API_KEY)
and fails before anything starts when it is missing. ``ray_session(config)`` connects to
``ray.address`` or starts a local Ray (token auth off: it is this process's private cluster) and shuts
down only what it started.
"""
from __future__ import annotations

import contextlib
import logging
import os
import secrets
from typing import Iterator

from .config import LOCAL_BASE_URL, JinaSettings, LimitsSettings
from .jina.client import Secret, resolve_api_key

__all__ = ["jina_endpoint", "ray_session", "local_token_count"]

log = logging.getLogger("jinabatch")


@contextlib.contextmanager
def jina_endpoint(j: JinaSettings, limits: LimitsSettings | None = None) -> Iterator[tuple[str, Secret]]:
    """(base URL, key) to embed with; with base_url "local" a bundled server enforcing ``limits`` (if given)."""
    if j.base_url.rstrip("/") != LOCAL_BASE_URL:
        yield j.base_url, resolve_api_key(None, j.api_key_env)
        return
    from .local_api.server import LocalServer, ServerSettings

    key = "jina_local_" + secrets.token_hex(16)
    settings = ServerSettings(api_keys=frozenset({key}), **(
        {"rpm": limits.rpm, "tpm": limits.tpm, "concurrency": limits.concurrency} if limits else {}))
    server = LocalServer(settings).start()
    log.info("started the local Jina-compatible server at %s", server.url)
    try:
        yield server.url, Secret(key)
    finally:
        server.stop()


def local_token_count(texts: list[str]) -> int:
    """Tokens the local stand-in bills for ``texts``: its tokenizer is known, so a plan can count exactly."""
    from .local_api.fakemodel import count_tokens

    return sum(count_tokens(t) for t in texts)


@contextlib.contextmanager
def ray_session(config) -> Iterator[None]:
    import ray

    if ray.is_initialized():
        yield
        return
    address = config.ray.address or None
    # None would also join any cluster /tmp/ray/ray_current_cluster names (someone's `ray start`); "local"
    # starts our own. RAY_ADDRESS (set by `ray job submit` for the driver) is still honoured.
    auto = None if os.environ.get("RAY_ADDRESS") else "local"
    kwargs: dict = {"address": address or auto, "log_to_driver": True, "logging_level": logging.WARNING}
    if address is None:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        kwargs["include_dashboard"] = False
    ray.init(**kwargs)
    try:
        yield
    finally:
        ray.shutdown()

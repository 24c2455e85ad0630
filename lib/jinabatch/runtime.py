"""Services a job starts for itself: the bundled Jina-compatible server and a local Ray.

``jina_endpoint(config)`` yields the base URL and the keys to use (a ``KeyPool``: one key, or one per variable
``jina.api_key_env`` lists): with ``jina.base_url = "local"`` it starts the bundled server (enforcing the
config's ``[limits]`` per key, like the real API would) under one fresh random key per configured key and
stops it afterwards; otherwise it resolves the keys from the environment and fails before anything starts
when one is missing. With ``probe=True`` it then checks the endpoint and every key with one tiny request each
(``jinabatch.jina.probe``), so a typo in the URL, a dead network or a revoked key fails in seconds, before a
job schedules anything. ``ray_session(config)`` connects to ``ray.address`` or starts a local Ray (token auth
off: it is this process's private cluster) and shuts down only what it started; ``lazy_ray(config)`` yields
the ``ray_context`` the plan-time passes take: Ray is started only if a pass needs it, and kept until the
block ends.
"""
from __future__ import annotations

import contextlib
import logging
import os
import secrets
from typing import Callable, Iterator

from .config import LOCAL_BASE_URL, JinaSettings, LimitsSettings
from .jina.keys import KeyPool, Secret, resolve_keys

__all__ = ["jina_endpoint", "ray_session", "lazy_ray", "local_token_count", "serve_stand_in"]

log = logging.getLogger("jinabatch")


@contextlib.contextmanager
def jina_endpoint(j: JinaSettings, limits: LimitsSettings | None = None, *,
                  probe: bool = False) -> Iterator[tuple[str, KeyPool]]:
    """(base URL, keys) to embed with; with base_url "local" a bundled server enforcing ``limits`` per key."""
    if j.base_url.rstrip("/") != LOCAL_BASE_URL:
        keys = resolve_keys(j.api_key_env)
        if probe:
            _probe(j, j.base_url, keys)
        yield j.base_url, keys
        return
    from .local_api.server import LocalServer, ServerSettings

    keys = KeyPool([Secret("jina_local_" + secrets.token_hex(16)) for _ in j.api_key_env])
    settings = ServerSettings(api_keys=frozenset(keys.get()), **(
        {"rpm": limits.rpm, "tpm": limits.tpm, "concurrency": limits.concurrency} if limits else {}))
    server = LocalServer(settings).start()
    log.info("started the local Jina-compatible server at %s with %d key(s)", server.url, len(keys))
    try:
        if probe:
            _probe(j, server.url, keys)
        yield server.url, keys
    finally:
        server.stop()


def _probe(j: JinaSettings, url: str, keys: KeyPool) -> None:
    from .jina.probe import check_endpoint

    keys.probe_spend = check_endpoint(j, url, keys)
    log.info("%s answers for %d key(s)", url, len(keys))
    if j.base_url.rstrip("/") != LOCAL_BASE_URL and any(p.get("stand_in") for p in keys.probe_spend):
        log.warning("%s is the jinabatch local stand-in (it says so in its answers), not the Jina API: its vectors "
                    "are deterministic test vectors, yet this output will be labelled as served by the API. To "
                    "embed with the stand-in, set jina.base_url = \"local\" (the job starts it and labels its "
                    "output so that it is never reused or resumed as the real model's)", url)


def local_token_count(texts: list[str]) -> int:
    """Tokens the local stand-in bills for ``texts``: its tokenizer is known, so a plan can count exactly."""
    from .local_api.fakemodel import count_tokens

    return sum(count_tokens(t) for t in texts)


def serve_stand_in(argv: list[str] | None = None) -> int:
    """``jinabatch serve``: the bundled server in the foreground with its own flags (``argv``); the exit code."""
    from .local_api.server import main

    return main(argv, prog="jinabatch serve")


@contextlib.contextmanager
def ray_session(config) -> Iterator[None]:
    """Ray for the block: ``ray.address``'s cluster, or a local Ray started here (and shut down after); one
    already running in this process is used as it is."""
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


@contextlib.contextmanager
def lazy_ray(config) -> Iterator[Callable[[], contextlib.AbstractContextManager]]:
    """A ``ray_context`` for ``plan_corpus`` / ``check_load_target``: its first call starts ``ray_session(config)``,
    which lasts until this block ends (no Ray at all when every pass runs in process)."""
    with contextlib.ExitStack() as stack:
        started: list[bool] = []

        def need() -> contextlib.AbstractContextManager:
            if not started:
                stack.enter_context(ray_session(config))
                started.append(True)
            return contextlib.nullcontext()

        yield need

"""Fixtures for the embed stage: one local Ray for the session, and embed configs pointing at a server.

* ``ray_local`` — ``ray.init(num_cpus=2, include_dashboard=False)`` once per session, token auth off
  (``RAY_AUTH_MODE=disabled`` set before init), shut down at the end. ``run_embed`` reuses an initialized
  Ray instead of starting its own, so every embed test shares this one (~3 s to start, paid once).
* ``embed_config(corpus_path, out, base_url=..., **sections)`` — a ``Config`` for an embed run: the test model
  (jina-embeddings-v3, 64 dims, retrieval.passage), the key in an env var set with monkeypatch to the
  session's distinctive ``jina_key``, small shards and fast retries; ``sections`` are merged over it
  (``jina={"on_too_long": "skip"}``, ``limits={...}``, ``ray={"workers": 4}``).
"""
from __future__ import annotations

import os

import pytest

from jinabatch.config import parse_config

__all__ = ["ray_local", "embed_config", "KEY_ENV", "base_config"]

KEY_ENV = "JINABATCH_TEST_API_KEY"


@pytest.fixture(scope="session")
def ray_local():
    import ray

    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started = not ray.is_initialized()
    if started:
        # address="local": a fresh private Ray even when another Ray runs on this machine (address=None
        # would join the one /tmp/ray/ray_current_cluster names, and refuse num_cpus)
        ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024 ** 2,
                 log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


def base_config(corpus_path: str, out: str, base_url: str, **sections) -> dict:
    """The dict behind ``embed_config`` (also written as TOML for subprocess runs)."""
    data = {
        "corpus": {"path": str(corpus_path), "columns": ["title", "n", "score", "flag"], "rows_per_shard": 200},
        "jina": {"base_url": base_url, "api_key_env": KEY_ENV, "model": "jina-embeddings-v3",
                 "task": "retrieval.passage", "dimensions": 64, "retry_wait_initial": 0.05,
                 "retry_wait_max": 0.5, "retry_wait_jitter": 0.05, "read_timeout": 10.0},
        "limits": {"rpm": 100_000, "tpm": 100_000_000, "concurrency": 8},
        "ray": {"workers": 2, "max_retries": 3},
        "output": {"path": str(out)},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return data


@pytest.fixture
def embed_config(monkeypatch, jina_key):
    monkeypatch.setenv(KEY_ENV, jina_key)

    def make(corpus_path, out, base_url: str = "local", **sections):
        return parse_config(base_config(corpus_path, out, base_url, **sections), source="test")

    return make

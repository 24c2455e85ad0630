"""API keys: ``Secret`` (one key that never prints or pickles) and ``KeyPool`` (the keys a job spreads over).

A key is read from the environment variable ``jina.api_key_env`` names — or from each of the variables, when
it is a list: a *pool* of keys, each with its own budget (``[limits]`` per key). Keys are named by their
position (``key0``, ``key1``…) and by their variable; their values never appear in a message, a repr, a log
line or a pickle. ``KeyPool.get()`` returns the plain values for the one place that needs them together:
the driver's ``ray.put`` (the object store, never a task argument).
"""
from __future__ import annotations

import os
from collections.abc import Sequence

from ..config import key_envs
from ..errors import AuthError

__all__ = ["Secret", "KeyPool", "resolve_api_key", "resolve_keys", "FALLBACK_KEY_ENV"]

FALLBACK_KEY_ENV = "JINA_API_KEY"


class Secret:
    """Holds a credential; prints as ``***`` and cannot be pickled (so it never rides along unseen).

    ``name`` is where it came from (an environment variable's name), ``label`` its place in a pool (``key0``);
    both are safe to print."""

    __slots__ = ("_value", "name", "label")

    def __init__(self, value: str, *, name: str | None = None, label: str | None = None):
        self._value = value
        self.name = name
        self.label = label

    def get(self) -> str:
        return self._value

    def describe(self) -> str:
        """``key0 ($JINAAI_API_KEY)``, or as much of it as is known; never the value."""
        if self.label and self.name:
            return f"{self.label} (${self.name})"
        return self.label or (f"${self.name}" if self.name else "the API key")

    def __repr__(self) -> str:
        return "***"

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("the API key is not picklable; pass the name of its environment variable instead")


class KeyPool(Sequence[Secret]):
    """The keys of a job, in the order of ``jina.api_key_env``; ``pool[i]`` is ``key{i}``."""

    def __init__(self, keys: Sequence[Secret]):
        if not keys:
            raise ValueError("a key pool needs at least one key")
        self._keys = list(keys)
        for i, k in enumerate(self._keys):
            k.label = k.label or f"key{i}"
        self.probe_spend: list[dict[str, int]] = []  # what checking each key cost (jinabatch.jina.probe)

    def __getitem__(self, i):  # type: ignore[override]
        return self._keys[i]

    def __len__(self) -> int:
        return len(self._keys)

    def get(self) -> list[str]:
        """The plain values, in order — only for ``ray.put``."""
        return [k.get() for k in self._keys]

    def __repr__(self) -> str:
        return f"KeyPool({', '.join(k.describe() for k in self._keys)})"

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("API keys are not picklable; pass the names of their environment variables instead")


def resolve_api_key(api_key: str | Secret | KeyPool | None, key_env: str | Sequence[str] = "JINAAI_API_KEY") -> Secret:
    """The key from the argument, else the first variable of ``key_env``, else ``$JINA_API_KEY`` (one key).

    A ``KeyPool`` gives its first key. AuthError naming the variables if none is set."""
    if isinstance(api_key, KeyPool):
        return api_key[0]
    if isinstance(api_key, Secret):
        return api_key
    name = key_envs(key_env)[0]
    if api_key and api_key.strip():
        return Secret(api_key.strip())
    value = os.environ.get(name)
    if not (value and value.strip()) and os.environ.get(FALLBACK_KEY_ENV, "").strip():
        name, value = FALLBACK_KEY_ENV, os.environ[FALLBACK_KEY_ENV]
    if not value or not value.strip():
        names = " or ".join(dict.fromkeys([key_envs(key_env)[0], FALLBACK_KEY_ENV]))
        raise AuthError(f"no Jina API key: set {names} in the environment (or pass api_key=...); "
                        "get a key at https://jina.ai/embeddings")
    return Secret(value.strip(), name=name)


def resolve_keys(key_env: str | Sequence[str]) -> KeyPool:
    """Every key ``jina.api_key_env`` names. One name: as ``resolve_api_key`` (``JINA_API_KEY`` as fallback);
    a list: each variable must be set, and no two may hold the same key (it would double its budget)."""
    names = key_envs(key_env)
    if len(names) == 1:
        return KeyPool([resolve_api_key(None, names[0])])
    missing = [n for n in names if not os.environ.get(n, "").strip()]
    if missing:
        raise AuthError(f"jina.api_key_env names {len(names)} keys, but {', '.join(missing)} "
                        f"{'is' if len(missing) == 1 else 'are'} not set in the environment")
    values = [os.environ[n].strip() for n in names]
    for i, v in enumerate(values):
        j = values.index(v)
        if j < i:
            raise AuthError(f"jina.api_key_env: {names[j]} and {names[i]} hold the same key; a pool needs "
                            "distinct keys (each has its own budget)")
    return KeyPool([Secret(v, name=n) for v, n in zip(values, names)])

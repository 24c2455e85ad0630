"""API keys and pools: named by position and variable, never shown, never pickled; a pool needs every
variable set and distinct keys."""
import pickle

import pytest

from jinabatch.errors import AuthError
from jinabatch.jina.keys import KeyPool, Secret, resolve_api_key, resolve_keys

A, B = "jina_pool_SECRET_aaaa1111", "jina_pool_SECRET_bbbb2222"


def test_a_pool_is_named_by_index_and_variable_and_never_shows_or_pickles_a_key(monkeypatch):
    monkeypatch.setenv("KEY_A", A)
    monkeypatch.setenv("KEY_B", B)
    pool = resolve_keys(["KEY_A", "KEY_B"])
    assert repr(pool) == "KeyPool(key0 ($KEY_A), key1 ($KEY_B))" and str(pool) == repr(pool)
    assert [k.describe() for k in pool] == ["key0 ($KEY_A)", "key1 ($KEY_B)"]
    assert pool.get() == [A, B]  # only for ray.put
    for obj in (pool, pool[0]):
        with pytest.raises(TypeError, match="not picklable"):
            pickle.dumps(obj)
        assert A not in repr(obj) and B not in repr(obj)


def test_a_pool_with_an_unset_variable_fails_naming_it(monkeypatch):
    monkeypatch.setenv("KEY_A", A)
    monkeypatch.delenv("KEY_B", raising=False)
    with pytest.raises(AuthError, match="KEY_B is not set") as e:
        resolve_keys(["KEY_A", "KEY_B"])
    assert A not in str(e.value)


def test_the_same_key_twice_in_a_pool_is_refused_it_would_double_its_budget(monkeypatch):
    monkeypatch.setenv("KEY_A", A)
    monkeypatch.setenv("KEY_B", A)
    with pytest.raises(AuthError, match="KEY_A and KEY_B hold the same key") as e:
        resolve_keys(["KEY_A", "KEY_B"])
    assert A not in str(e.value)


def test_one_variable_falls_back_to_jina_api_key_and_a_client_takes_a_pools_first_key(monkeypatch):
    monkeypatch.delenv("KEY_A", raising=False)
    monkeypatch.setenv("JINA_API_KEY", B)
    pool = resolve_keys("KEY_A")
    assert len(pool) == 1 and pool[0].get() == B and pool[0].name == "JINA_API_KEY"
    assert resolve_api_key(KeyPool([Secret(A), Secret(B)])).get() == A

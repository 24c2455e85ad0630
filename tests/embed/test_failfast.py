"""Fail fast: the endpoint and every key are checked with one tiny request before Ray starts or a shard is
scheduled; a typo in base_url, a dead network or a refused key ends the run with one line naming the URL and
the cause (never the key). A run that fails later still reports the corpus's rows."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from corpus_gen import make_corpus, write_rows
from fixtures_ray import KEY_ENV, base_config
from jinabatch.config import JinaSettings, parse_config
from jinabatch.embed.driver import run_embed
from jinabatch.errors import AuthError, BadRowError, InvalidRequest, ResponseError
from jinabatch.jina.keys import KeyPool, Secret
from jinabatch.jina.probe import check_endpoint

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
NO_SUCH_HOST = "http://jinabatch-no-such-host.invalid/v1"


def _job(tmp_path: Path, jina_key: str, **jina) -> subprocess.CompletedProcess:
    from test_driver_faults import _job_env, _toml

    make_corpus(tmp_path / "c", files=2, rows_per_file=100, row_group_size=50)
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(_toml(base_config(tmp_path / "c", tmp_path / "out", jina.pop("base_url"), jina=jina)))
    return subprocess.run([sys.executable, str(REPO / "jobs" / "embed.py"), str(cfg), "--no-progress"],
                          env=_job_env(jina_key), capture_output=True, text=True, timeout=120)


def test_unresolvable_host_fails_in_one_line_before_ray_starts(tmp_path, jina_key):
    """jobs/embed.py with a host that does not resolve: exit 1, one line naming the URL and the cause, and
    Ray never started (nothing was scheduled)."""
    p = _job(tmp_path, jina_key, base_url=NO_SUCH_HOST)
    assert p.returncode == 1, p.stderr[-2000:]
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("error: TransportError: cannot reach " + NO_SUCH_HOST + "/embeddings")
    assert "does not resolve" in last and "jina.base_url" in last
    assert "Started a local Ray" not in p.stderr and not (tmp_path / "out" / "shards").exists()
    assert jina_key not in p.stdout + p.stderr


def test_a_misspelt_model_fails_in_the_endpoint_check_in_one_line_naming_it_and_the_url(tmp_path, jina_key):
    """jobs/embed.py with model = "jina-embedings-v3" (a typo the table does not know, so it only warns): the stand-in
    refuses it, the endpoint check ends the run with one line naming the model, the URL and the model meant — before
    the plan, before Ray starts, nothing written."""
    p = _job(tmp_path, jina_key, base_url="local", model="jina-embedings-v3")
    assert p.returncode == 1, p.stderr[-2000:]
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("error: InvalidRequest: http://127.0.0.1:") and "/v1/embeddings refused jina.model " \
        "'jina-embedings-v3' (422: model: unknown model 'jina-embedings-v3'" in last
    assert "check the spelling (did you mean 'jina-embeddings-v3'" in last
    assert "not in jinabatch's model table" in p.stderr  # the warning came first, as one line
    assert "Started a local Ray" not in p.stderr and not (tmp_path / "out" / "_plan").exists()


def test_an_answer_of_another_width_than_configured_fails_in_the_check_not_in_every_shard(make_jina_server, jina_key):
    srv = make_jina_server(fault_every=1, faults=("wrong_dims",))
    with pytest.raises(ResponseError) as e:
        check_endpoint(JinaSettings(dimensions=64), srv.url, Secret(jina_key))
    assert str(e.value).startswith(f"{srv.url}/embeddings answered 32-dim vectors for jina-embeddings-v3, not 64 "
                                   "(jina.dimensions)")


def test_a_typo_in_the_path_is_a_404_naming_the_url_and_the_setting(jina_server, jina_key):
    url = jina_server.url.replace("/v1", "/v2")
    with pytest.raises(InvalidRequest) as e:
        check_endpoint(JinaSettings(), url, Secret(jina_key, name=KEY_ENV))
    assert f"{url}/embeddings" in str(e.value) and "404" in str(e.value) and "jina.base_url" in str(e.value)


def test_a_refused_key_of_a_pool_is_named_by_index_and_variable_never_by_value(jina_server, jina_key):
    """key1 of a pool is refused: AuthError naming key1 and its variable; the first key was checked too."""
    bad = "jina_revoked_3b7e9f_must_not_show"
    before = jina_server.stats()["requests"]
    pool = KeyPool([Secret(jina_key, name="KEY_A"), Secret(bad, name="KEY_B")])
    with pytest.raises(AuthError) as e:
        check_endpoint(JinaSettings(dimensions=64), jina_server.url, pool)
    msg = str(e.value)
    assert "key1 ($KEY_B)" in msg and "401" in msg and bad not in msg and jina_key not in msg
    assert jina_server.stats()["requests"] == before + 2  # one per key, no retries


def test_the_check_reports_what_each_key_spent_and_the_width_it_answered(jina_server, jina_key):
    from jinabatch.jina.probe import PROBE_TEXT
    from jinabatch.local_api import fakemodel

    spent = check_endpoint(JinaSettings(dimensions=64), jina_server.url, Secret(jina_key))
    assert spent == [{"tokens": fakemodel.count_tokens(PROBE_TEXT), "requests": 1, "stand_in": True, "dim": 64}]


def test_the_stand_in_at_an_explicit_url_is_named_in_a_warning(jina_server, jina_key, monkeypatch, caplog):
    """base_url set to the local server's URL (say, from jobs/serve.py): the check sees its header and warns
    that the output would be labelled as the API's, pointing at base_url = "local"."""
    from jinabatch.runtime import jina_endpoint

    monkeypatch.setenv("JINAAI_API_KEY", jina_key)
    with caplog.at_level("WARNING", logger="jinabatch"):
        with jina_endpoint(JinaSettings(dimensions=64, base_url=jina_server.url), probe=True) as (url, keys):
            assert url == jina_server.url and keys.probe_spend[0]["stand_in"] is True
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(jina_server.url in m and 'base_url = "local"' in m for m in warned), warned


def test_a_run_that_fails_later_still_reports_the_corpus_rows(ray_local, embed_config, jina_server, tmp_path):
    """on_too_long = fail stops the run at one row: the report says finished false and rows_in = every row of
    the corpus, not only the rows of the shards that finished."""
    rows = [{"id": i, "text": f"row {i} about walnut ember"} for i in range(120)]
    rows[100] = {"id": 100, "text": "hello " * 8333}
    write_rows(tmp_path / "c" / "a.parquet", rows, carried=False, row_group_size=20)
    cfg = embed_config(tmp_path / "c", tmp_path / "out", jina_server.url, corpus={"columns": [], "rows_per_shard": 20},
                       jina={"on_too_long": "fail"})
    with pytest.raises(BadRowError):
        run_embed(cfg, progress=False)
    report = json.loads((tmp_path / "out" / "_report.json").read_text())
    assert report["finished"] is False and report["rows_in"] == 120
    assert report["rows_embedded"] + report["rows_dead_letter"] < 120


def test_base_url_local_with_a_pool_starts_one_key_per_variable(embed_config, tmp_path):
    """The bundled server gets one random key per configured variable; the check passes for each."""
    from jinabatch.runtime import jina_endpoint

    cfg = parse_config({"jina": {"base_url": "local", "api_key_env": ["A_KEY", "B_KEY"], "dimensions": 64}})
    with jina_endpoint(cfg.jina, cfg.limits, probe=True) as (url, keys):
        assert len(keys) == 2 and len(set(keys.get())) == 2 and repr(keys) == "KeyPool(key0, key1)"
        assert [s["requests"] for s in keys.probe_spend] == [1, 1]

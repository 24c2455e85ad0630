"""jobs/load.py and jobs/search.py as a user runs them: exit codes, one-line reasons, no secrets printed."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pymilvus import MilvusClient

from fixtures_milvus import DIMS, MODEL, make_output, sample_texts
from jinabatch.load.milvus import alias_target

ROOT = Path(__file__).resolve().parents[2]
SECRET = "milvus_token_SECRET_9d1f_must_never_be_printed"


def _toml(path: Path, out: Path, uri: str, collection: str, **milvus) -> Path:
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in milvus.items())
    path.write_text(f'[jina]\nbase_url = "local"\nmodel = "{MODEL}"\ndimensions = {DIMS}\n\n'
                    f'[output]\npath = "{out}"\n\n[milvus]\nuri = "{uri}"\ncollection = "{collection}"\n{extra}')
    return path


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def test_load_job_then_search_job_print_the_row_searched_for_first(tmp_path):
    texts = sample_texts(60)
    make_output(tmp_path / "out", texts)
    cfg = _toml(tmp_path / "c.toml", tmp_path / "out", str(tmp_path / "lite.db"), "jobs_lite")
    load = _run("jobs/load.py", str(cfg), "--no-progress")
    assert load.returncode == 0, load.stderr
    rep = json.loads(load.stdout.strip().splitlines()[-1])
    assert (rep["collection"], rep["rows"], rep["mode"]) == ("jobs_lite", 60, "insert")
    found = _run("jobs/search.py", str(cfg), texts[42], "-k", "2")
    assert found.returncode == 0, found.stderr
    lines = found.stdout.splitlines()
    assert lines[1].startswith(" 1. score") and lines[1].endswith("id doc-000042")
    assert lines[2].strip() == f"text: {texts[42]}"


def test_load_job_without_embed_output_exits_1_with_a_one_line_reason(tmp_path):
    cfg = _toml(tmp_path / "c.toml", tmp_path / "missing", str(tmp_path / "lite.db"), "nothing")
    r = _run("jobs/load.py", str(cfg))
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith("error: LoadError: ")
    assert "_report.json: no embed report; run the embed stage first" in r.stderr


def test_search_before_any_load_says_to_run_the_load(tmp_path):
    cfg = _toml(tmp_path / "c.toml", tmp_path / "out", str(tmp_path / "lite.db"), "never_loaded")
    r = _run("jobs/search.py", str(cfg), "anything")
    assert r.returncode == 1 and "run the load first" in r.stderr.strip().splitlines()[-1]


def test_search_job_takes_several_queries_and_a_file_of_them(tmp_path):
    texts = sample_texts(30)
    make_output(tmp_path / "out", texts)
    cfg = _toml(tmp_path / "c.toml", tmp_path / "out", str(tmp_path / "lite.db"), "many")
    assert _run("jobs/load.py", str(cfg), "--no-progress").returncode == 0
    (tmp_path / "q.txt").write_text(f"{texts[4]}\n\n  {texts[21]}  \n")
    r = _run("jobs/search.py", str(cfg), texts[9], "--queries", str(tmp_path / "q.txt"), "-k", "1", "--json")
    assert r.returncode == 0, r.stderr
    assert [(h["query"], h["id"]) for h in map(json.loads, r.stdout.splitlines())] == [
        (texts[9], "doc-000009"), (texts[4], "doc-000004"), (texts[21], "doc-000021")]


def test_search_job_without_a_query_or_with_an_unreadable_queries_file_exits_1_saying_so(tmp_path):
    cfg = _toml(tmp_path / "c.toml", tmp_path / "out", str(tmp_path / "lite.db"), "noquery")
    r = _run("jobs/search.py", str(cfg), "--compare", "previous")
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1] == (
        "error: ConfigError: no query given: pass the text as an argument or a file of queries with --queries FILE")
    r = _run("jobs/search.py", str(cfg), "--queries", str(tmp_path / "nope.txt"))
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith(f"error: ConfigError: --queries {tmp_path / 'nope.txt'}: "
                                                        "cannot read it")


@pytest.mark.slow
@pytest.mark.milvus
def test_load_and_rollback_jobs_on_the_server_never_print_the_milvus_token(tmp_path, milvus_server):
    make_output(tmp_path / "out", sample_texts(20))
    cfg = _toml(tmp_path / "c.toml", tmp_path / "out", milvus_server.uri, "jobs_server", keep_previous=1)
    env = {"MILVUS_TOKEN": SECRET}
    runs = [_run("jobs/load.py", str(cfg), env=env) for _ in range(2)]
    runs.append(_run("jobs/load.py", str(cfg), "--rollback", env=env))
    assert [r.returncode for r in runs] == [0, 0, 0], runs[-1].stderr
    first, second = (json.loads(r.stdout.strip().splitlines()[-1]) for r in runs[:2])
    client = MilvusClient(milvus_server.uri)
    assert alias_target(client, "jobs_server") == first["physical"] != second["physical"]
    client.close()
    for r in runs:
        assert SECRET not in r.stdout + r.stderr
    assert SECRET not in (tmp_path / "out" / "_load_report.json").read_text()

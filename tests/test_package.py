"""The package's public face: the names users import from ``jinabatch``, and a light ``import jinabatch``."""
import subprocess
import sys

import jinabatch


def test_public_names_resolve_to_the_stage_and_client_objects():
    from jinabatch import JinaClient, JinaEmbeddingFunction, load_config, run_embed, run_load
    from jinabatch.embed.driver import run_embed as driver_run_embed
    from jinabatch.jina.client import JinaClient as client_cls
    from jinabatch.jina.facade import JinaEmbeddingFunction as facade_cls
    from jinabatch.load.stage import run_load as stage_run_load

    assert (JinaClient, JinaEmbeddingFunction, run_embed, run_load) == (client_cls, facade_cls, driver_run_embed,
                                                                        stage_run_load)
    assert load_config is jinabatch.config.load_config


def test_every_name_in_all_resolves_and_errors_are_exported():
    for name in jinabatch.__all__:
        assert getattr(jinabatch, name) is not None, name
    for sub in ("jina", "embed", "load", "local_api"):
        pkg = __import__(f"jinabatch.{sub}", fromlist=["__all__"])
        for name in pkg.__all__:
            assert getattr(pkg, name) is not None, f"jinabatch.{sub}.{name}"
    assert issubclass(jinabatch.RateLimited, jinabatch.TransientError)
    assert "RetriesExhausted" in jinabatch.__all__


def test_unknown_attribute_is_an_attribute_error():
    try:
        jinabatch.no_such_name
    except AttributeError as e:
        assert "no_such_name" in str(e)
    else:
        raise AssertionError("expected AttributeError")


def test_import_jinabatch_loads_neither_ray_nor_milvus_nor_httpx():
    code = ("import sys, jinabatch, jinabatch.jina, jinabatch.embed, jinabatch.load, jinabatch.local_api; "
            "print(sorted(m for m in ('ray', 'pymilvus', 'milvus', 'httpx', 'aiohttp') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_the_job_never_imports_the_local_stand_in_except_through_runtime():
    """Only runtime.jina_endpoint (the base_url = "local" switch) may import jinabatch.local_api."""
    from pathlib import Path

    lib = Path(jinabatch.__file__).parent
    offenders = [str(p.relative_to(lib)) for p in lib.rglob("*.py")
                 if "local_api" not in p.parts and p.name != "runtime.py" and p.name != "__init__.py"
                 and ("local_api" in p.read_text())]
    assert offenders == []

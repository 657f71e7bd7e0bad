# Two commands do all the set-up on a fresh machine (Debian, Python 3.11+, Node 20+):
#   make run    installs the Python and npm packages, then starts one node (embedded in-memory state)
#   make test   installs those plus redis-server and chromium (Debian packages), then runs the suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: run test install system-deps bench clean

run: install
	$(PY) -m server

test: install system-deps
	$(PY) -m pytest

install: $(VENV)/.installed node_modules/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

node_modules/.installed: package.json
	npm install --no-audit --no-fund --loglevel=error
	touch $@

system-deps:
	bash .ci/system-deps

bench: install
	bash bench/run.sh

clean:
	rm -rf $(VENV) node_modules .pytest_cache

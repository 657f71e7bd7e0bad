# Two commands do all the set-up on a fresh machine (Debian, Python 3.11+, Node 20+):
#   make run    installs the Python and npm packages, then starts one node (embedded in-memory state)
#   make test   installs those plus redis-server and chromium (Debian packages), then runs the suite
# Python packages come from requirements.lock (every package pinned, with hashes), npm packages
# from package-lock.json. After editing dependencies in pyproject.toml: `make lock`; to move
# every package to its newest allowed version: `make lock-upgrade`. Commit the lock file.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
LOCK   := requirements.lock
# pip-compile lives in a venv of its own, so it never ends up in the server's.
TOOLS  := .venv-tools
PIP_TOOLS_VERSION := 7.6.2
COMPILE := CUSTOM_COMPILE_COMMAND="make lock" $(TOOLS)/bin/pip-compile --quiet --extra test \
	--all-build-deps --allow-unsafe --generate-hashes --strip-extras \
	--no-emit-find-links --no-emit-index-url --output-file $(LOCK) pyproject.toml

.PHONY: run test install system-deps lock lock-upgrade bench clean

run: install
	$(PY) -m server

test: install system-deps
	$(PY) -m pytest

install: $(VENV)/.installed node_modules/.installed

# Locked packages first (hash-checked, the build backend included), then the project itself
# without dependencies and without build isolation, so nothing unlocked is fetched.
# setup.py compiles server/_codec.pyx (Cython, gcc) into the package in place: rebuilt when it changes.
$(VENV)/.installed: pyproject.toml $(LOCK) setup.py server/_codec.pyx
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

lock: $(TOOLS)/bin/pip-compile
	$(COMPILE)

lock-upgrade: $(TOOLS)/bin/pip-compile
	$(COMPILE) --upgrade

$(TOOLS)/bin/pip-compile:
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet pip-tools==$(PIP_TOOLS_VERSION)

system-deps:
	bash .ci/system-deps

bench: install
	bash bench/run.sh

clean:
	rm -rf $(VENV) $(TOOLS) node_modules .pytest_cache

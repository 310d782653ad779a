# selfmaker - two commands on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# The install stamp depends on pyproject.toml, so a changed dependency list reinstalls and an
# unchanged one costs nothing.
STAMP := $(VENV)/.selfmaker-installed

.PHONY: setup demo test test-fast bench engine images clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip wheel setuptools
	$(PIP) install -q -e '.[dev,infra]'
	@touch $@

demo: setup
	$(PY) examples/quickstart.py

test: setup engine
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not container"

# Installs a container engine (podman from Debian packages) where none works; no-op otherwise.
engine:
	@bash scripts/install-engine.sh

images: setup engine
	bash scripts/build-images.sh

bench: setup
	$(PY) -m bench $(B)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info

# `make run` and `make test` each first make sure .venv exists and holds the pinned stack.
# The stamp file re-runs the installs only when requirements.txt or pyproject.toml change.

VENV   := .venv
PYTHON := $(VENV)/bin/python
PIP    := $(PYTHON) -m pip
STAMP  := $(VENV)/.installed
# The CPU build that lies on local disk; installed first so nothing pulls a CUDA build of torch.
TORCH  := torch==2.13.0

.PHONY: install run test test-all test-e2e lint

install: $(STAMP)

$(PYTHON):
	python3 -m venv $(VENV)

$(STAMP): requirements.txt pyproject.toml | $(PYTHON)
	$(PIP) install $(TORCH)
	$(PIP) install -r requirements.txt
	$(PIP) install -e . --no-deps
	touch $@

run: $(STAMP)
	$(VENV)/bin/fedrec simulate

test: $(STAMP)
	$(PYTHON) -m pytest

test-all: $(STAMP)
	$(PYTHON) -m pytest -m "slow or not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# The loopback deployment tests (SuperLink + 3 SuperNodes with TLS and node auth, SecAgg+ runs, faults):
# a few minutes on 2 cores, so outside `make test`; CI runs both (.ci/run).
test-e2e: $(STAMP)
	$(PYTHON) -m pytest -m "e2e and not secagg_dropout" tests/test_deploy_e2e.py

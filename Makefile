# rptdose — set-up and the everyday commands. Everything is installed into .venv by these targets.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
GATE_STAMP := $(VENV)/.gate-installed
# The CPU build of torch is installed first and pinned, so that the package's own `torch`
# requirement is already satisfied and no multi-GB CUDA build is pulled in.
TORCH  := torch==2.13.0
PYTEST_ARGS ?=

DEMO_DIR ?= rptdose-demo

.PHONY: setup setup-gate test test-slow test-all bench lint demo clean

setup: $(STAMP)

# The optional GATE 10 extra (opengate, ~3 GB with ITK): the tests build real GATE simulations.
# Its Geant4 data sets are not installed here (see README, "GATE").
setup-gate: $(GATE_STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH)
	$(PIP) install --quiet -e '.[dev]'
	touch $(STAMP)

$(GATE_STAMP): $(STAMP)
	$(PIP) install --quiet -e '.[dev,gate]'
	touch $(GATE_STAMP)

# Default suite: everything but tests marked slow (kept under ~15 min on 2 cores).
test: setup-gate
	$(PY) -m pytest -n 2 -m "not slow" $(PYTEST_ARGS)

# Only the tests marked slow (CI runs them after `make test`); "none collected" (pytest exit 5)
# is not a failure.
test-slow: setup-gate
	$(PY) -m pytest -n 2 -m slow $(PYTEST_ARGS) || [ $$? -eq 5 ]

# Everything, slow and Monte Carlo tests included.
test-all: setup-gate
	$(PY) -m pytest -n 2 $(PYTEST_ARGS)

# A digital patient through the whole pipeline; prints the report's path at the end.
demo: setup
	$(VENV)/bin/rptdose demo -o $(DEMO_DIR)

bench: setup
	$(PY) -m bench

lint: setup
	$(VENV)/bin/ruff check dosimetry planning phantoms cli tests bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache $(DEMO_DIR)

# SelfMedHPM bundles: one entry point per workflow. `make demo` runs the main job, `make test` the test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA ?= results/data
RESULTS ?= results/demo

.PHONY: venv demo test lint format verify bench bench-quick release clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m selfmedhpm.demo --data_dir $(DATA) --results_dir $(RESULTS)

test: $(STAMP)
	$(PY) -m pytest -q -ra tests

lint: $(STAMP)
	$(PY) -m black --check -l 120 custom tests
	$(PY) -m isort --check-only --profile black -l 120 custom tests
	$(PY) -m flake8 custom tests

format: $(STAMP)
	$(PY) -m black -l 120 custom tests
	$(PY) -m isort --profile black -l 120 custom tests

clean:
	rm -rf results dist build

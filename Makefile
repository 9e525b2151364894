# Every target bootstraps from nothing: a fresh clone needs only python3.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-fast serve lint bench bench-smoke audit clean

$(STAMP): pyproject.toml examples/tuner-example-objective/pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build of torch first: a bare `torch` requirement would pull CUDA wheels.
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[dev]"
	# The example plugin: tests tune it over HTTP like a user's own model family.
	$(BIN)/pip install -q --no-deps -e examples/tuner-example-objective
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest -q tests examples/tuner-example-objective/tests

test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not slow"

serve: $(STAMP)
	$(BIN)/tuner serve

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python -m benchmarks

bench-smoke: $(STAMP)
	$(BIN)/python -m benchmarks --smoke

audit: $(STAMP)
	$(BIN)/pip-audit --skip-editable

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

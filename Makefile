# The two commands of the README, plus helpers. Every target sets up what it needs first.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup serve test test-all lint bench-gateway clean

setup:
	scripts/setup.sh

## Serve the embedded SmolLM2-135M-Instruct at http://127.0.0.1:8000 (converted on first run).
serve: setup
	$(PY) -m server $(ARGS)

## Lint + the test suite (unit + end-to-end on a tiny random model); slow tests excluded.
test: setup
	scripts/test.sh

## Everything, including slow tests (real SmolLM2 conversion, vllm bench serve).
test-all: setup
	scripts/test.sh -m ""

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

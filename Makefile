# The two set-up commands: `make run` and `make test`. Everything else is a helper.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help prereqs venv run test stack-up stack-down stack-status lint typecheck unit lock clean

help:
	@echo "make run    - venv, install, local stack up, db init, serve on http://127.0.0.1:8000"
	@echo "make test   - the same stack, then lint-imports, ruff, mypy, hadolint, pip-audit and pytest"
	@echo "make stack-down - stop Kafka, the DynamoDB API emulator and Redis"

prereqs:
	@scripts/check-prereqs

$(BIN)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

venv: $(BIN)/.installed

stack-up: prereqs venv
	$(BIN)/messaging stack up

stack-down:
	@if [ -x $(BIN)/messaging ]; then $(BIN)/messaging stack down; fi

stack-status: venv
	$(BIN)/messaging stack status

run: stack-up
	$(BIN)/messaging db init
	$(BIN)/messaging serve

lint: venv
	$(BIN)/lint-imports
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint Dockerfile
	$(BIN)/python scripts/audit-deps

typecheck: venv
	$(BIN)/mypy

unit: venv
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

test: stack-up lint typecheck
	$(BIN)/pytest $(PYTEST_ARGS)

# Re-resolve the pinned versions (constraints.txt) from pyproject's lower bounds.
lock:
	rm -rf .lock-venv && python3 -m venv .lock-venv
	.lock-venv/bin/pip install --quiet --upgrade pip
	.lock-venv/bin/pip install --quiet -e ".[dev]"
	{ echo '# Exact versions for CI and make (pip install -c constraints.txt -e ".[dev]"); regenerate with `make lock`.'; \
	  .lock-venv/bin/pip freeze --exclude-editable; } > constraints.txt
	rm -rf .lock-venv

clean: stack-down
	rm -rf .stack $(VENV) test-artifacts

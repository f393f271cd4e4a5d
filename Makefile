# The two set-up commands: `make run` and `make test`. Everything else is a helper.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help prereqs venv run lab test stack-up stack-down stack-status doctor lint typecheck unit lock clean

help:
	@echo "make run    - install missing system packages, venv, local stack up, db init, serve on http://127.0.0.1:8000"
	@echo "              (APPS=3 make run: three app processes behind HAProxy on that address)"
	@echo "make lab    - the local stack up, then the lab console on http://127.0.0.1:8010/lab (docs/lab.md)"
	@echo "make test   - the same (plus Chromium), then lint-imports, ruff, mypy, hadolint, pip-audit and pytest"
	@echo "make stack-down - stop Kafka, the DynamoDB API emulator and Redis"
	@echo "make doctor - what is installed, which ports are taken and by whom, caches and logs"

# The system packages (apt-get as root or with sudo -n; else it prints the command and stops).
# `make test` also needs Chromium and an emoji font: its prerequisites see PREREQS=test.
PREREQS ?= run
test: PREREQS := test
prereqs:
	@scripts/install-prereqs $(PREREQS)

# First run only: pip prints its own progress; the stage line says how long it took.
$(BIN)/.installed: pyproject.toml constraints.txt
	@echo "== venv and install: $(VENV) (first run, and after pyproject.toml or constraints.txt change)"
	@start=$$SECONDS; \
	python3 -m venv $(VENV) \
	&& $(BIN)/pip install --upgrade pip \
	&& $(BIN)/pip install -c constraints.txt -e ".[dev]" \
	&& touch $@ \
	&& echo "== venv and install: $$(( SECONDS - start ))s"

venv: $(BIN)/.installed

stack-up: prereqs venv
	@$(BIN)/messaging stack up

stack-down:
	@if [ -x $(BIN)/messaging ]; then $(BIN)/messaging stack down; fi

stack-status: venv
	$(BIN)/messaging stack status

doctor: venv
	@$(BIN)/messaging doctor

# APPS=N: N app processes behind HAProxy on the same address, in the background (ADR 0031).
APPS ?=
run: stack-up
	@$(BIN)/messaging db init
ifeq ($(strip $(APPS)),)
	@echo "== serve: http://$${MESSAGING_HOST:-127.0.0.1}:$${MESSAGING_PORT:-8000}/ (Ctrl-C stops the app, make stack-down the stack)"
	@$(BIN)/messaging serve
else
	@$(BIN)/messaging stack up --apps $(APPS)
	@echo "== serve: http://$${MESSAGING_HOST:-127.0.0.1}:$${MESSAGING_PORT:-8000}/ through HAProxy to $(APPS) app processes (messaging stack status lists them; messaging stack up --apps 0 stops them, make stack-down everything)"
endif

lab: stack-up
	@$(BIN)/messaging lab

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

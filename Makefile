# The two commands of a fresh machine:  make demo   and   make test
# ARGS passes flags through:  make demo ARGS=--once   make test ARGS="-k gateway"   make test ARGS=tests/chaos
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: demo test bench screenshot lint typecheck services-up services-down install clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

services-up: $(STAMP)
	$(BIN)/livestream services up

services-down: $(STAMP)
	$(BIN)/livestream services down

demo: $(STAMP)
	$(BIN)/livestream demo $(ARGS)

test: $(STAMP)
	deploy/local/test-deps.sh
	$(BIN)/livestream services up
	$(BIN)/pytest $(ARGS)

bench: $(STAMP)
	$(BIN)/livestream services up
	$(BIN)/livestream bench $(ARGS)

screenshot: $(STAMP)
	deploy/local/test-deps.sh
	$(BIN)/python -m livestream.screenshot --out docs/board.png $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache

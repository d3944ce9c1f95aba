# cdkd: every target that runs Python depends on `install`, so each works first on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MODEL ?= fc_siam_diff
DATA ?= synthetic
ARGS ?=

.PHONY: help install test test-all lint format demo train clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv and install cdkd (editable, with dev extras)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: install ## run the default test suite (CPU, no network)
	$(BIN)/python -m pytest -q

test-all: install ## run every test, the slow ones included
	$(BIN)/python -m pytest -q -m ''

lint: install ## ruff check and format check
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts

format: install ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix src tests scripts
	$(BIN)/ruff format src tests scripts

demo: install ## generate the synthetic dataset, train, evaluate and print the results table
	$(BIN)/python scripts/demo.py $(ARGS)

train: install ## train one stage: make train MODEL=tinycd DATA=jl1cd ARGS="stage=baseline"
	$(BIN)/python -m cdkd.train model=$(MODEL) data=$(DATA) $(ARGS)

clean: ## remove caches (keeps .venv, runs/ and data/)
	rm -rf .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

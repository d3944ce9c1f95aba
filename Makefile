# cdkd: every target that runs Python depends on `install`, so each works first on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MODEL ?= fc_siam_diff
DATA ?= synthetic
ARGS ?=

.PHONY: help install test test-all lint typecheck format demo paper-dryrun train pipeline pipeline-two sweep study analyze bench docs docs-serve clean release-check

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv and install cdkd (editable, with dev extras)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Tests run in parallel, one worker per CPU computing on one thread (tests/conftest.py). Each
# worker starts with a contiguous share of the tests (a file mostly stays in one worker, so its
# module fixtures are built once) and an idle worker steals from a busy one, so one long file
# does not leave the other CPU idle at the end. PYTEST_WORKERS=0 runs them in this process.
PYTEST_WORKERS ?= auto
PYTEST := $(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist worksteal

test: install ## type check, then the default test suite (CPU, no network)
	$(BIN)/mypy
	$(PYTEST)

test-all: install ## run every test, the slow ones included
	$(PYTEST) -m ''

lint: install ## ruff check, format check and the type check
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts
	$(BIN)/mypy

typecheck: install ## mypy over src/cdkd, strict where pyproject.toml says (part of make test)
	$(BIN)/mypy

format: install ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix src tests scripts
	$(BIN)/ruff format src tests scripts

demo: install ## the whole O-P / MTKD pipeline (lambda chosen on validation) on synthetic data; prints Table III
	$(BIN)/python -m cdkd.pipeline experiment=demo $(ARGS)

paper-dryrun: install ## the real-data path (JL1-CD layout, local backbone weights, lambda grid) in minutes
	$(BIN)/python scripts/paper_dryrun.py $(ARGS)

train: install ## train one stage: make train MODEL=tinycd DATA=jl1cd ARGS="stage=teacher_s"
	$(BIN)/python -m cdkd.train model=$(MODEL) data=$(DATA) $(ARGS)

pipeline: install ## baseline, teachers, O-P eval, lambda grid, MTKD eval; writes runs/DATA/MODEL/results.md
	$(BIN)/python -m cdkd.pipeline model=$(MODEL) data=$(DATA) $(ARGS)

pipeline-two: install ## the same with two teachers split at CAR 0.10 (paper Table V)
	$(BIN)/python -m cdkd.pipeline model=$(MODEL) data=$(DATA) partition=two $(ARGS)

sweep: install ## the paper's lambda grid for the student, then its summary table
	$(BIN)/python -m cdkd.train hparams_search=lambda_grid model=$(MODEL) data=$(DATA) $(ARGS)
	$(BIN)/python -m cdkd.report model=$(MODEL) data=$(DATA) $(ARGS)

study: install ## the distillation study (losses, routings, controls; 3 seeds) into docs/distillation.md
	$(BIN)/python scripts/study.py $(ARGS)

analyze: install ## the paper's figures and tables for a model whose pipeline has run
	$(BIN)/python -m cdkd.analyze model=$(MODEL) data=$(DATA) $(ARGS)

bench: install ## student vs baseline training-step time (JSON lines)
	$(BIN)/python scripts/bench.py $(ARGS)

# The documentation site (mkdocs.yml): its packages are the `docs` extra, installed on first use.
# The tutorials run at their tiny size while the site builds; strict mode fails on any warning.
DOCS_STAMP := $(VENV)/.docs-installed
DOCS_ENV := CDKD_TUTORIAL_SIZE=tiny OMP_NUM_THREADS=1 NO_MKDOCS_2_WARNING=1

$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -c 'import mkdocs, material, mkdocstrings_handlers.python, mkdocs_jupyter' 2>/dev/null \
		|| $(BIN)/python -m pip install --quiet -e '.[docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP) ## check docs/models.md, build the site into site/ (strict; tutorials at tiny size)
	OMP_NUM_THREADS=1 $(BIN)/python scripts/model_zoo.py --check
	$(DOCS_ENV) $(BIN)/python -m mkdocs build --strict

docs-serve: $(DOCS_STAMP) ## preview the documentation site at http://127.0.0.1:8000
	$(DOCS_ENV) $(BIN)/python -m mkdocs serve

clean: ## remove caches (keeps .venv, runs/ and data/)
	rm -rf .pytest_cache .ruff_cache .mypy_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

release-check: install ## build sdist + wheel, twine and wheel-content checks, smoke run of the wheel in a fresh venv
	bash scripts/release_check.sh $(BIN)/python

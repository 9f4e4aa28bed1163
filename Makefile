# mtlrun: `make run` trains the default experiment, `make test` runs the fast tests,
# `make test-all` every test (what CI runs, after `make lint` and `make typecheck`).
# Each creates .venv and installs the package (with test tools) when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install run test test-all smoke bench tb lint typecheck format clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-9s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install mtlrun with its test tools

run: $(STAMP) ## train the default experiment on the built-in shapes dataset (ARGS=... for overrides)
	$(BIN)/mtlrun $(ARGS)

test: $(STAMP) ## the fast tests, a minute or two (not those marked slow)
	$(BIN)/python -m pytest -q -m "not slow" $(ARGS)

test-all: $(STAMP) lint typecheck ## lint and type-check, then every test, slow ones too (what CI runs)
	$(BIN)/python -m pytest -q $(ARGS)

smoke: $(STAMP) ## a few training steps of everything, on CPU
	$(BIN)/mtlrun experiment=smoke $(ARGS)

bench: $(STAMP) ## measure speed; results go to benchmarks/results/
	$(BIN)/python benchmarks/run.py $(ARGS)

tb: $(STAMP) ## TensorBoard over outputs/ on http://127.0.0.1:6006
	$(BIN)/tensorboard --logdir outputs --host 127.0.0.1 --port 6006

lint: $(STAMP) ## ruff check and format check of src, tests and benchmarks
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(STAMP) ## mypy over src/mtlrun (settings in pyproject.toml)
	$(BIN)/mypy

format: $(STAMP) ## ruff fix and format
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

clean: ## remove the environment, build files and caches (outputs/ stays)
	rm -rf $(VENV) build dist .pytest_cache .ruff_cache .mypy_cache src/*.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

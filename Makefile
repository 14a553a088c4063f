# deepdram — run `make help` for the list of targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# No telemetry, no update checks: the machines here reach only package registries.
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export DO_NOT_TRACK := 1
export TF_CPP_MIN_LOG_LEVEL := 2

.DEFAULT_GOAL := help
.PHONY: help install services data repro test test-fast bench bench-scale ui serve deps clean
TRACKING_URI ?= sqlite:///$(CURDIR)/mlruns/mlflow.db
UI_PORT ?= 5000
SCALE_TRIALS ?= 2000
MODEL ?= deepdram-forward
PORT ?= 5001
# `make test` runs the suite on this many pytest-xdist workers (CI: 2 cores), one module or
# group of modules per worker at a time (tests/conftest.py); TEST_WORKERS=0 runs it in this process.
TEST_WORKERS ?= 2
XDIST := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder)
# `make ui` and `make serve` listen on the loopback address only; HOST=0.0.0.0 (say so) exposes them.
HOST ?= 127.0.0.1

# Stage commands in dvc.yaml call `python`: make it the project's environment.
export PATH := $(abspath $(VENV))/bin:$(PATH)

help: ## Show this help: every target with what it does
	@awk 'BEGIN {FS = ":.*## "; printf "Usage: make <target>\n\nTargets:\n"} \
	  /^[a-zA-Z_-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml requirements-lock.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements-lock.txt -e '.[test]'
	@touch $(STAMP)

install: $(STAMP) ## Create .venv if missing and install deepdram with its test extras (pinned)

services: ## Install the PostgreSQL server and Chromium the tests use, if missing (apt-get; idempotent)
	@bash scripts/setup_services.sh

data: $(STAMP) ## Restore data/ (curated inputs tracked by data.dvc) from the committed DVC remote
	$(VENV)/bin/dvc pull --quiet data.dvc

repro: data ## Run the whole DVC pipeline on the default profile (params.yaml)
	$(VENV)/bin/dvc repro

test: data services ## Run the whole test suite (what CI runs; PostgreSQL and UI tests included) [TEST_WORKERS=2]
	$(PY) -m pytest $(XDIST)

test-fast: data ## Run the test suite without the slow end-to-end tests [TEST_WORKERS=2]
	$(PY) -m pytest $(XDIST) -m "not slow"

bench: $(STAMP) services ## Run the benchmarks and print measured figures against their targets
	$(PY) benchmarks/bench_fem.py
	$(PY) benchmarks/bench_adjoint.py
	$(PY) benchmarks/bench_design.py
	$(PY) benchmarks/bench_inverse.py
	$(PY) benchmarks/bench_composite.py
	$(PY) benchmarks/bench_serving.py
	$(PY) benchmarks/bench_training.py
	$(PY) benchmarks/bench_tuning.py
	$(PY) benchmarks/bench_mlflow_scale.py --trials $(SCALE_TRIALS)

bench-scale: $(STAMP) services ## MLflow at the paper's scale alone: make bench-scale [SCALE_TRIALS=2000]
	$(PY) benchmarks/bench_mlflow_scale.py --trials $(SCALE_TRIALS)

ui: $(STAMP) ## Start the MLflow UI on http://127.0.0.1:5000 (project store: mlruns/mlflow.db) [HOST=127.0.0.1]
	$(VENV)/bin/mlflow ui --backend-store-uri $(TRACKING_URI) --host $(HOST) --port $(UI_PORT)

serve: $(STAMP) ## Serve a champion model: make serve MODEL=deepdram-forward [PORT=5001 HOST=127.0.0.1]
	MLFLOW_TRACKING_URI=$(TRACKING_URI) $(VENV)/bin/mlflow models serve \
	  -m models:/$(MODEL)@champion --env-manager local -h $(HOST) -p $(PORT)

deps: $(STAMP) ## Check that dvc.yaml lists each stage's import closure and params (fix: python -m deepdram.jobs.deps --write)
	$(PY) -m deepdram.jobs.deps

clean: ## Remove caches (keeps .venv, outputs and mlruns)
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +
	rm -rf .pytest_cache

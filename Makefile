# rlhfjob: `make help` lists the targets.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
STAMP := $(VENV)/.installed
# uv installs the exact versions in uv.lock; this uv, pinned, in its own venv (.uv-<version>).
UV_VERSION := 0.9.7
UV_HOME := .uv-$(UV_VERSION)
UV := $(UV_HOME)/bin/uv
# `uv sync` makes $(VENV) hold exactly the lock's packages for these extras.
SYNC = UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync --frozen --python $(PYTHON)

.DEFAULT_GOAL := help

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS=":.*## "}; {printf "  %-14s %s\n", $$1, $$2}'

$(UV):
	$(PYTHON) -m venv $(UV_HOME)
	$(UV_HOME)/bin/pip install -q uv==$(UV_VERSION)

$(STAMP): pyproject.toml uv.lock | $(UV)
	$(SYNC) --extra dev
	touch $@

lock: $(UV) ## Re-resolve uv.lock after editing the dependencies in pyproject.toml
	$(UV) lock

venv: $(STAMP) ## Create .venv and install rlhfjob with its dev extras

demo: $(STAMP) ## Train the PPO example (sorting digits) and print its reward table
	mkdir -p out
	$(PY) examples/ppo_sort.py --plot out/ppo_reward.png

test: $(STAMP) cluster-bin ## Run the whole test suite (builds the test control plane first if missing)
	$(PY) -m pytest -q

# Ray and py-spy come only with the bench extra; the runtime never imports them.
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP) pyproject.toml uv.lock
	$(SYNC) --extra dev --extra bench
	touch $@

bench: $(BENCH_STAMP) ## Benchmarks against Ray, raw TensorPipe, gloo, memcpy, uncached generation, TRL: tables (out/bench.md)
	mkdir -p out
	$(PY) bench/run.py --out out/bench.md

.PHONY: bench

lint: $(STAMP) ## ruff, mypy, the import rules (lint-imports; e.g. the operator never imports torch), uv.lock current
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(UV) lock --check

# Binaries go to ${RLHFJOB_CACHE:-~/.cache/rlhfjob}, keyed by version; present ones are skipped.
cluster-bin: $(STAMP) | $(UV) ## Build the test control plane and kubectl/helm into the cache
	PYTHON=$(PY) PIP=$(UV_HOME)/bin/pip tests/cluster/build.sh

.PHONY: cluster-bin

.PHONY: help venv lock demo test lint

crds: $(STAMP) ## Regenerate crds/ (and the chart's copy) from the RLHFJob models in operator/rlhfjob_operator/spec/
	$(PY) -m rlhfjob_operator.crd --out crds/rlhfjobs.rlhf.dev.yaml
	$(MAKE) chart-crds

chart-crds: ## Copy crds/ into the Helm chart (helm/rlhfjob/crds/)
	mkdir -p helm/rlhfjob/crds
	cp crds/*.yaml helm/rlhfjob/crds/

.PHONY: crds chart-crds

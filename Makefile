# rlhfjob: `make help` lists the targets.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS=":.*## "}; {printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

venv: $(STAMP) ## Create .venv and install rlhfjob with its dev extras

demo: $(STAMP) ## Train the PPO example (sorting digits) and print its reward table
	mkdir -p out
	$(PY) examples/ppo_sort.py --plot out/ppo_reward.png

test: $(STAMP) cluster-bin ## Run the whole test suite (builds the test control plane first if missing)
	$(PY) -m pytest -q

# Ray and py-spy come only with the bench extra; the runtime never imports them.
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(VENV)/bin/pip install -q -e '.[bench]'
	touch $@

bench: $(BENCH_STAMP) ## Benchmarks against Ray, raw TensorPipe, gloo and memcpy: prints tables (out/bench.md)
	mkdir -p out
	$(PY) bench/run.py --out out/bench.md

.PHONY: bench

lint: $(STAMP) ## ruff, mypy, and the import rules (lint-imports; e.g. the operator never imports torch)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# Binaries go to ${RLHFJOB_CACHE:-~/.cache/rlhfjob}, keyed by version; present ones are skipped.
cluster-bin: $(STAMP) ## Build the test control plane and kubectl/helm into the cache
	PYTHON=$(PY) tests/cluster/build.sh

.PHONY: cluster-bin

.PHONY: help venv demo test lint

crds: $(STAMP) ## Regenerate crds/ (and the chart's copy) from the RLHFJob models in operator/rlhfjob_operator/spec/
	$(PY) -m rlhfjob_operator.crd --out crds/rlhfjobs.rlhf.dev.yaml
	$(MAKE) chart-crds

chart-crds: ## Copy crds/ into the Helm chart (helm/rlhfjob/crds/)
	mkdir -p helm/rlhfjob/crds
	cp crds/*.yaml helm/rlhfjob/crds/

.PHONY: crds chart-crds

# One-command set-up: `make run` and `make test` create .venv from the pinned lock file when needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Jobs run in parallel on the cores; one BLAS thread each avoids oversubscription, which on a busy
# 2-core machine made small matrix products 10-100x slower.
export OPENBLAS_NUM_THREADS ?= 1
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1

.PHONY: run test lint bench verify simulate robma-sensitivity multiverse clean-results help

help:
	@echo "make run    - install pinned dependencies into .venv and run the whole pipeline"
	@echo "make test   - install if needed, then lint and run the test suite"
	@echo "make bench  - run the performance benchmarks (prints tables)"
	@echo "make verify - rerun the pipeline into a temporary folder and print any output that differs"
	@echo "make simulate - Monte-Carlo simulation study of the interval methods -> results/simulation/ (not part of run)"
	@echo "make multiverse - multiverse / specification-curve analysis -> tables/multiverse.csv (not part of run)"
	@echo "make robma-sensitivity - RoBMA-PSMA under alternative priors -> tables/prior_sensitivity_robma.csv (not part of run)"

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# A run killed by SIGKILL leaves Snakemake's lock behind: release it (one make run per checkout at a time).
run: $(STAMP)
	@$(BIN)/snakemake --profile workflow/profiles/default --unlock > /dev/null 2>&1 || true
	$(BIN)/snakemake --profile workflow/profiles/default
	$(BIN)/snakemake --profile workflow/profiles/default --report results/report.html \
		--report-metadata results/report/metadata.yaml --report-stylesheet workflow/report/style.css
	@$(BIN)/alliancemeta where

lint: $(STAMP)
	$(BIN)/ruff check src tests workflow benchmarks
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile workflow/rules

# Test modules run in parallel worker processes (pytest-xdist), each module whole in one worker, so that a
# module's expensive fixture is made once; the integration run shared across modules is made once per session
# (tests/integration/conftest.py).
test: $(STAMP) lint
	$(BIN)/python -m pytest -n auto --dist loadscope --no-loadscope-reorder --durations=15

verify: $(STAMP)
	$(BIN)/alliancemeta verify

# The simulation study is its own target (about 25 min on one busy core with the default design); pass e.g.
# SIMULATE_ARGS="--cores 1" to keep it to one process.
simulate: $(STAMP)
	@$(BIN)/snakemake --profile workflow/profiles/default --unlock > /dev/null 2>&1 || true
	$(BIN)/snakemake --profile workflow/profiles/default $(SIMULATE_ARGS) results/simulation/simulation.csv

# RoBMA-PSMA prior sensitivity: one ensemble per alternative prior set of bayes.robma.sensitivity (minutes per
# dataset; three-level datasets take longest).
robma-sensitivity: $(STAMP)
	@$(BIN)/snakemake --profile workflow/profiles/default --unlock > /dev/null 2>&1 || true
	$(BIN)/snakemake --profile workflow/profiles/default robma_sensitivity_all

# Multiverse / specification curve of every study-level dataset (batches of multiverse.batch_size
# specifications, one job each; under 1 min for the bundled data on two cores). On a Slurm cluster:
# see workflow/profiles/slurm/README.md.
multiverse: $(STAMP)
	@$(BIN)/snakemake --profile workflow/profiles/default --unlock > /dev/null 2>&1 || true
	$(BIN)/snakemake --profile workflow/profiles/default multiverse_all

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

clean-results:
	rm -rf results data/processed logs

# make run   - build .venv if absent, then run the whole pipeline on the embedded demo
# make test  - build .venv if absent, then run every test
# make bench - side-by-side benchmarks (results/bench/)
# make lint  - ruff, snakemake --lint, and the config schema check
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: run test bench lint venv clean

venv: $(STAMP)

# Rebuilt only when the pins change; an existing .venv is reused.
$(STAMP): envs/requirements.txt pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet -r envs/requirements.txt
	$(VENV)/bin/python -m pip install --quiet --no-deps -e .
	touch $@

run: $(STAMP)
	snakemake
	@echo
	@echo "Shards:   results/data/digits/shards/ (index.json, verified.json)"
	@echo "Logs:     results/logs/"

test: $(STAMP)
	python -m pytest

bench: $(STAMP)
	python benchmarks/loader.py

lint: $(STAMP)
	ruff check .
	ruff format --check .
	snakemake --lint
	python -m pipeline schema --check

clean:
	rm -rf results .snakemake

# make run   - build .venv if absent, then run the whole pipeline on the embedded demo
# make test  - build .venv if absent, then run every test
# make bench - side-by-side benchmarks (results/bench/)
# make bench-scale - ImageNet-sized inputs and 1,024 workers, simulated (docs/scaling.md)
# make lint  - ruff, snakemake --lint, snakefmt, the config schema and the docs' figures
# make docs  - write the docs' generated figures (cog blocks) and config/README.md
# make reproduce - the regime study of docs/reproduction.md (about 7 h on 2 cores; resumes)
# make reproduce-short - its 8-epoch sweep (about 40 min on 2 cores)
# make ui    - the MLflow UI on http://127.0.0.1:5000 (PORT=... to change)
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: run test bench bench-scale lint docs ui reproduce reproduce-short venv clean

# Files whose cog blocks quote figures from the repository's files (docs/figures.py).
COGGED := README.md docs/design.md docs/scaling.md docs/performance.md docs/reproduction.md profiles/slurm/config.yaml

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
	@echo "Report:   results/runs/demo/report/report.md (metrics.csv, summary.json next to it)"
	@echo "Plot:     results/runs/demo/report/curves.png"
	@echo "Weights:  results/runs/demo/final.pt"
	@echo "MLflow:   results/mlflow.db (browse it with: make ui)"
	@echo "Logs:     results/logs/"

test: $(STAMP)
	python -m pytest

# Side by side, each printing a table and writing results/bench/<name>.json (see
# docs/performance.md). benchmarks/gpu.sh runs on a GPU machine instead.
bench: $(STAMP)
	python benchmarks/loader.py --varied
	python benchmarks/loader.py --workers 1 --out results/bench/loader_one_worker.json
	python benchmarks/preprocess.py
	python benchmarks/trainer_step.py
	python benchmarks/lars_step.py --repeats 40
	python benchmarks/allreduce.py
	python benchmarks/allreduce_precision.py
	python benchmarks/resume_reads.py
	python benchmarks/host_memory.py
	python benchmarks/mlflow_concurrency.py
	python -m pipeline plan --check-paper --json results/bench/plan.json

# About 7 min on 2 cores; scratch files in the temporary folder (SCALE_WORK=... elsewhere).
bench-scale: $(STAMP)
	python benchmarks/scale.py $(if $(SCALE_WORK),--work $(SCALE_WORK))

lint: $(STAMP)
	ruff check .
	ruff format --check .
	snakemake --lint
	snakefmt --check Snakefile workflow/rules/*.smk
	python -m pipeline schema --check
	cog --check -I docs $(COGGED)

docs: $(STAMP)
	cog -r -I docs $(COGGED)
	python -m pipeline schema --write

# The paper's claim at small scale (docs/reproduction.md): three recipes x three minibatch
# sizes x two seeds on Imagenette at the paper's steps per epoch, then the ablations at the
# paper-equivalent size, which reuse its runs at that size. Finished runs are reused.
REGIME := config/experiments/regime-imagenette.yaml
reproduce: $(STAMP)
	snakemake reproduce --configfile $(REGIME)
	snakemake reproduce --configfile $(REGIME) $(basename $(REGIME))-ablations.yaml

# Four methods x three sizes for 8 epochs (40 min on 2 CPU cores).
reproduce-short: $(STAMP)
	snakemake reproduce --configfile config/experiments/reproduce-imagenette.yaml

# The MLflow UI on the project's tracking store, bound to this machine only.
ui: $(STAMP)
	mlflow server --host 127.0.0.1 --port $${PORT:-5000} --workers 1 \
		--backend-store-uri sqlite:///$(abspath results)/mlflow.db \
		--artifacts-destination $(abspath results)/mlartifacts

clean:
	rm -rf results .snakemake

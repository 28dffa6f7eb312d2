# Two commands a newcomer needs (both create the environment and the data if missing):
#   make reproduce   run every notebook at PROFILE (default cpu) into results/, then the summary
#   make test        the whole test suite, every notebook included at smoke size
SHELL := /bin/bash
PROFILE ?= cpu
# Domain notebooks run in parallel, one per core, single-threaded; one at a time on a GPU.
JOBS ?= $(if $(filter paper,$(PROFILE)),1,$(shell nproc))
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_DATASETS_OFFLINE ?= 1
export HF_HUB_OFFLINE ?= 1
export MPLBACKEND ?= Agg
export PYTHONUNBUFFERED := 1

.PHONY: env data test smoke reproduce image language autoencoder summary benchmarks notebooks-clean

# The virtual environment, installed from the exact lock; rebuilt when the lock changes.
$(STAMP): requirements.lock pyproject.toml
	@if [ -f $(STAMP) ]; then echo "requirements.lock changed: rebuilding $(VENV)"; rm -rf $(VENV); fi
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

env: $(STAMP)

# Offline datasets (Debian Fashion-MNIST, plain-text corpora); idempotent.
data: $(STAMP)
	$(PY) -m gns_utils.data prepare

test: data
	$(PY) -m pytest -q

# Notebooks only, at smoke size (a quick end-to-end check).
smoke: data
	$(PY) -m pytest -q -m notebook

# The main job: every domain notebook at PROFILE, then the summary. Executed copies and
# every figure / summary land in results/.
reproduce: data
	$(PY) scripts/reproduce.py --profile $(PROFILE) --jobs $(JOBS)
	$(PY) scripts/results_table.py --readme README.md

image: data
	$(PY) scripts/reproduce.py --profile $(PROFILE) --only 01_image_classification
language: data
	$(PY) scripts/reproduce.py --profile $(PROFILE) --only 02_language_model
autoencoder: data
	$(PY) scripts/reproduce.py --profile $(PROFILE) --only 03_autoencoder
summary: $(STAMP)
	$(PY) scripts/reproduce.py --profile $(PROFILE) --only 99_summary

# Speed ratios against baselines timed in the same process; the output is kept in results/benchmarks.txt.
benchmarks: $(STAMP)
	( $(PY) benchmarks/noise_overhead.py && $(PY) benchmarks/train_throughput.py ) | tee results/benchmarks.txt

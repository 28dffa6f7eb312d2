# Two commands a newcomer needs (both create the environment and the data if missing):
#   make reproduce   train every run of every notebook at PROFILE (default cpu) anew into results/,
#                    then compare with the committed results (results/reproduction.md)
#   make test        the whole test suite, every notebook included at smoke size
#   make replicate   the same at other seeds, into replication/: does another draw agree with results/?
# Also: make lab (JupyterLab on the notebooks), make benchmarks, one target per notebook.
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

.PHONY: env data test smoke reproduce replicate lab calibration image language autoencoder rl dynamics local summary benchmarks

# The virtual environment, installed from the exact lock; rebuilt when the lock changes.
$(STAMP): requirements.lock pyproject.toml
	@if [ -f $(STAMP) ]; then echo "requirements.lock changed: rebuilding $(VENV)"; rm -rf $(VENV); fi
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e ".[experiments,dev]"
	@touch $@

env: $(STAMP)

# Offline datasets (Debian Fashion-MNIST, plain-text corpora); idempotent.
data: $(STAMP)
	$(PY) -m gns_utils.experiments.prepare

test: data
	$(PY) -m pytest -q

# Notebooks only, at smoke size (a quick end-to-end check).
smoke: data
	$(PY) -m pytest -q -m notebook

# The main job: every domain notebook at PROFILE, trained anew (an interrupted run resumes), then
# the summary and the comparison with the committed reference; then the README's results tables.
REPRODUCE := $(PY) -m gns_utils.experiments.reproduce --profile $(PROFILE) --jobs $(JOBS)
reproduce: data
	$(REPRODUCE)
	$(PY) -m gns_utils.experiments.tables --readme README.md

# A replication: every sweep at other seeds (1000 and its repeats), into replication/, judged against the
# committed results/ by the seed-aware standard errors (make reproduce, at the committed seeds, checks determinism).
replicate: data
	$(PY) -m gns_utils.experiments.reproduce --profile $(PROFILE) --jobs $(JOBS) --seed 1000 --results-dir replication --reference-dir results

# One notebook, trained anew and compared with the reference (then `make summary` redraws Fig 4).
calibration: data
	$(REPRODUCE) --only 00_calibration
image: data
	$(REPRODUCE) --only 01_image_classification
language: data
	$(REPRODUCE) --only 02_language_model
autoencoder: data
	$(REPRODUCE) --only 03_autoencoder
rl: data
	$(REPRODUCE) --only 04_reinforcement_learning
dynamics: data
	$(REPRODUCE) --only 05_noise_dynamics
local: data
	$(REPRODUCE) --only 06_local_critical_batch
summary: $(STAMP)
	$(REPRODUCE) --only 99_summary

# JupyterLab on the project's environment: open a notebook in notebooks/ and step through it.
# The kernel must draw inline: MPLBACKEND (Agg for the batch jobs above) is unset for it; root needs --allow-root.
lab: data
	env -u MPLBACKEND $(VENV)/bin/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root,)

# Speed ratios against baselines timed in the same process; the output is kept in benchmarks/results.txt.
benchmarks: $(STAMP)
	( $(PY) benchmarks/noise_overhead.py && $(PY) benchmarks/train_throughput.py ) | tee benchmarks/results.txt

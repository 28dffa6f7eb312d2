"""Test-suite set-up: never touch the network, draw figures off-screen."""

import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
# One thread per process: the test models are tiny, and more threads than free cores
# (a notebook kernel beside the test process, or a reproduce run) makes PyTorch's CPU
# kernels many times slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")

"""Test-suite set-up: never touch the network, draw figures off-screen; fixtures the noise tests share."""

import os

import pytest
import torch

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
# One thread per process: the test models are tiny, and more threads than free cores
# (a notebook kernel beside the test process, or a reproduce run) makes PyTorch's CPU
# kernels many times slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")



@pytest.fixture(scope="module")
def float64_one_thread():
    """float64 everywhere; one thread (tiny tensors). Restored after (modules opt in with ``usefixtures``)."""
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def exact(float64_one_thread):
    """The small regression problem with every quantity exact (``test_noise.make_exact``)."""
    from test_noise import make_exact

    return make_exact()


@pytest.fixture(scope="module")
def tiny_problem():
    """Four Gaussian classes in 8 dimensions, 1,024 examples: a classification problem trained in seconds."""
    from gns_utils.experiments.problems import ClassificationProblem

    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 8, generator=gen) * 1.5
    y = torch.randint(0, 4, (1024,), generator=gen)
    x = centres[y] + torch.randn(1024, 8, generator=gen)
    return ClassificationProblem((x, y), "mlp", {"in_features": 8, "n_classes": 4, "hidden": (16,)}, 256,
                                 torch.device("cpu"))

"""The environment: the lock and environment.yml agree, torch and torchvision import together."""

import re

from gns_utils.experiments.paths import repo_path


def _pins(lines):
    return {m.group(1).lower(): m.group(2) for m in (re.match(r"^\s*-?\s*([A-Za-z0-9_.\-\[\]]+)==(\S+)\s*$", l) for l in lines) if m}


def test_environment_yml_matches_lock():
    lock = _pins(repo_path("requirements.lock").read_text().splitlines())
    env = _pins(repo_path("environment.yml").read_text().splitlines())
    assert len(lock) > 20
    assert lock == env, {k: (lock.get(k), env.get(k)) for k in set(lock) | set(env) if lock.get(k) != env.get(k)}
    assert "python=3.11" in repo_path("environment.yml").read_text()


def test_torch_and_torchvision_import_together():
    import torch
    import torchvision
    from torchvision.ops import nms

    lock = _pins(repo_path("requirements.lock").read_text().splitlines())
    assert torch.__version__.split("+")[0] == lock["torch"]
    assert torchvision.__version__.split("+")[0] == lock["torchvision"]
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    assert nms(boxes, torch.tensor([0.9, 0.8]), 0.5).tolist() == [0]  # the op that fails on a mismatched pair


def test_pyproject_ranges_stay_loose():
    text = repo_path("pyproject.toml").read_text()
    assert "torch>=" in text and "torch==" not in text


def test_library_import_leaves_the_harness_and_its_dependencies_unimported():
    import subprocess
    import sys

    code = ("import sys, gns_utils; from gns_utils import GradientNoiseMonitor, NoiseScaleEMA, fit_tradeoff; "
            "print(' '.join(sorted(m for m in sys.modules if '.' not in m or m.startswith('gns_utils'))))")
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())
    for heavy in ("papermill", "datasets", "tokenizers", "seaborn", "matplotlib", "torchvision", "gns_utils.experiments",
                  "transformers", "lightning", "gymnasium", "ray", "pandas", "scipy"):
        assert heavy not in loaded, f"`import gns_utils` imported {heavy}"  # pandas and scipy: on first use
    assert {"torch", "numpy", "gns_utils.noise", "gns_utils.critical_batch", "gns_utils.theory"} <= loaded
    fitted = ("import numpy as np, gns_utils; b = np.array([8., 16, 32, 64, 128]); "
              "print(round(gns_utils.fit_tradeoff(b, 100 * (1 + 40 / b)).b_crit, 6))")
    assert subprocess.run([sys.executable, "-c", fitted], capture_output=True, text=True, check=True).stdout.strip() == "40.0"


def test_library_modules_never_import_the_harness():
    import ast

    for path in [*repo_path("gns_utils").glob("*.py"), *repo_path("gns_utils", "noise").glob("*.py")]:
        tree = ast.parse(path.read_text())
        names = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
        names += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [n for n in names if n.startswith("gns_utils.experiments")], path


def test_public_api_is_exported():
    import gns_utils

    for name in gns_utils.__all__:
        assert hasattr(gns_utils, name), name
    assert {"GradientNoiseMonitor", "PerExampleNormMonitor", "NoiseScaleEMA", "fit_tradeoff",
            "hessian_noise_scale", "per_example_estimate", "training_average", "combine_hessian_noise_scales",
            "checkpoint_noise_scale", "adam_preconditioner"} <= set(gns_utils.__all__)


def test_make_lab_gives_the_kernel_no_batch_backend_and_runs_as_root_only_with_allow_root():
    """The Makefile exports MPLBACKEND=Agg for the batch jobs; JupyterLab's kernel must draw inline
    (test_notebooks executes notebooks without the variable and finds the figures inline)."""
    recipe = repo_path("Makefile").read_text().split("\nlab:", 1)[1].split("\n\n")[0]
    assert "env -u MPLBACKEND" in recipe and "jupyter lab" in recipe
    assert "$(if $(filter 0,$(shell id -u)),--allow-root,)" in recipe

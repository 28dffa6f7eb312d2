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

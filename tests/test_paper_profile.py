"""The `paper` image set-ups run end to end at smoke size on small fabricated files in the
real on-disk formats (MNIST IDX, SVHN .mat, CIFAR-10 pickles), with the paper's models
(the MNIST/SVHN CNN, ResNet-32) and optimizers (SGD, Adam, momentum)."""

import json

import pytest
from fabricate import write_cifar10, write_mnist_like, write_svhn_mat

from gns_utils.experiments.pipeline import run_experiment
from gns_utils.experiments.profiles import experiment_configs

LR = {"sgd": 0.1, "adam": 3e-3, "momentum": 0.005}
SMOKE = dict(batch_sizes=[4, 8, 16], budget_examples=640, lr_b_star=1.0, goals=[2.25, 2.2], metric="loss", eval_examples=64,
             evals_per_decade=6, b_noise_examples=0, device="cpu")


def _fabricate(dataset, root):
    if dataset == "mnist":
        write_mnist_like(root / "MNIST" / "raw", n_train=120, n_test=10, learnable=True)
    elif dataset == "svhn":
        write_svhn_mat(root / "SVHN" / "train_32x32.mat", n=120, learnable=True)
    else:
        write_cifar10(root / "cifar-10-batches-py", n_per_batch=24, learnable=True)


@pytest.mark.parametrize("task", [c.task for c in experiment_configs("image", "paper")])
def test_paper_image_setup_on_fabricated_files(task, tmp_path):
    (preset,) = experiment_configs("image", "paper", tasks=[task])
    data_kwargs = {"root": str(tmp_path / "data"), "download": False}
    if preset.dataset in ("svhn", "cifar10"):
        data_kwargs["verify"] = False  # fabricated files cannot match the real md5 sums
    model_kwargs = {"width": 4} if preset.model == "resnet32" else {"channels": [4, 8], "hidden": 16}
    (cfg,) = experiment_configs("image", "paper", tasks=[task], data_kwargs=data_kwargs, model_kwargs=model_kwargs,
                                lr_star=LR[preset.optimizer], lr_grid_size=1, max_widen=0, **SMOKE)
    assert (cfg.model, cfg.optimizer, cfg.profile) == (preset.model, preset.optimizer, "paper")
    _fabricate(cfg.dataset, tmp_path / "data")
    result = run_experiment(cfg, tmp_path / "results", progress=False)
    summary = json.loads((tmp_path / "results" / task / "summary.json").read_text())
    assert summary["task"] == task and summary["dataset"] == preset.dataset and summary["model"] == preset.model
    assert result.table["run_id"].nunique() == 3
    assert result.table.drop_duplicates("run_id")["status"].isin(["complete", "budget_exhausted", "pruned"]).all()
    assert result.best["steps"].notna().any()

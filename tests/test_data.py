"""Image loaders: tiny files in each real on-disk format, read back through the loaders.

MNIST / Fashion-MNIST are gzipped IDX files, SVHN a MATLAB ``.mat``, CIFAR-10 python
pickle batches; each is written here byte for byte in that format and read through
torchvision's own readers, exactly as user data is.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
from fabricate import write_cifar10, write_idx, write_mnist_like, write_svhn_mat
import torch

from gns_utils.experiments import data
from gns_utils.experiments import prepare
from gns_utils.experiments.data import ImageTensors
from gns_utils.experiments.paths import DatasetIntegrityError, DatasetNotFoundError

os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
HAS_DEBIAN_FASHION = all((DEBIAN_FASHION / f"{n}.gz").is_file() for n in data.IDX_FILES)


@pytest.fixture(autouse=True)
def _no_system_fashion(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see only their own files unless they put the Debian folder back."""
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIRS", [])


# ----------------------------------------------------------------------------------------
# Writers of the real formats


def check_image_tensors(d: ImageTensors, n: int, shape: tuple[int, int, int]) -> None:
    assert isinstance(d, ImageTensors)
    assert d.x.shape == (n, *shape) and d.x.dtype == torch.float32
    assert d.y.shape == (n,) and d.y.dtype == torch.int64
    assert 0.0 <= d.x.min().item() and d.x.max().item() <= 1.0
    assert len(d.classes) == 10


# ----------------------------------------------------------------------------------------
# IDX: MNIST and Fashion-MNIST


@pytest.mark.parametrize("loader,folder", [(data.mnist, "MNIST"), (data.fashion_mnist, "FashionMNIST")])
@pytest.mark.parametrize("gz", [True, False])
def test_idx_files_round_trip(tmp_path: Path, loader, folder: str, gz: bool) -> None:
    arrays = write_mnist_like(tmp_path / folder / "raw", gz=gz)
    train, test = loader(train=True, root=tmp_path), loader(train=False, root=tmp_path)
    check_image_tensors(train, 12, (1, 28, 28))
    check_image_tensors(test, 5, (1, 28, 28))
    expected = torch.from_numpy(arrays["train-images-idx3-ubyte"]).float().unsqueeze(1) / 255
    assert torch.equal(train.x, expected)
    assert train.y.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert test.y.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert train.name.endswith("/train") and test.name.endswith("/test")


def test_fashion_mnist_found_in_system_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    system = tmp_path / "usr_share"
    arrays = write_mnist_like(system, n_train=10, n_test=3)
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIRS", [system])
    root = tmp_path / "root"
    d = data.fashion_mnist(root=root)
    check_image_tensors(d, 10, (1, 28, 28))
    assert d.classes[0] == "T-shirt/top"
    assert d.y.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert (root / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file()  # staged for torchvision


def test_idx_header_is_checked(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    write_mnist_like(raw, gz=False)
    write_idx(raw / "train-images-idx3-ubyte", np.zeros((4, 28), dtype=np.uint8))  # 2-D, not 3-D
    with pytest.raises(ValueError, match="3 dimension"):
        data.mnist(root=tmp_path)


# ----------------------------------------------------------------------------------------
# SVHN and CIFAR-10


def test_svhn_mat_round_trip(tmp_path: Path) -> None:
    X, y = write_svhn_mat(tmp_path / "SVHN" / "train_32x32.mat", n=13)
    d = data.svhn("train", root=tmp_path, verify=False)
    check_image_tensors(d, 13, (3, 32, 32))
    assert d.y.tolist() == [int(v) % 10 for v in y[:, 0]]  # the file's 10 is the digit 0
    assert 0 in d.y.tolist() and 10 not in d.y.tolist()
    # image i, channel c, row h, column w is X[h, w, c, i]
    assert torch.equal(d.x[4, 2], torch.from_numpy(X[:, :, 2, 4]).float() / 255)


def test_svhn_md5_checked_by_default(tmp_path: Path) -> None:
    write_svhn_mat(tmp_path / "SVHN" / "test_32x32.mat")
    with pytest.raises(DatasetIntegrityError, match="md5"):
        data.svhn("test", root=tmp_path)


def test_cifar10_pickle_round_trip(tmp_path: Path) -> None:
    written = write_cifar10(tmp_path / "cifar-10-batches-py")
    train = data.cifar10(train=True, root=tmp_path, verify=False)
    test = data.cifar10(train=False, root=tmp_path, verify=False)
    check_image_tensors(train, 20, (3, 32, 32))
    check_image_tensors(test, 4, (3, 32, 32))
    assert train.classes[0] == "airplane" and train.classes[9] == "truck"
    first = written["data_batch_1"]
    # a row of b'data' is 1024 red, then 1024 green, then 1024 blue values, row-major
    assert torch.equal(train.x[0], torch.from_numpy(first["data"][0].reshape(3, 32, 32)).float() / 255)
    expected_labels = sum((written[f"data_batch_{i}"]["labels"] for i in range(1, 6)), [])
    assert train.y.tolist() == expected_labels
    assert test.y.tolist() == written["test_batch"]["labels"]


def test_cifar10_md5_checked_by_default(tmp_path: Path) -> None:
    write_cifar10(tmp_path / "cifar-10-batches-py")
    with pytest.raises(DatasetIntegrityError, match="md5"):
        data.cifar10(root=tmp_path)


# ----------------------------------------------------------------------------------------
# Missing data sets: the error names the data set, where we looked and the command


@pytest.mark.parametrize("name,call,where,command", [
    ("mnist", lambda r: data.mnist(root=r), "MNIST/raw", "d.mnist(download=True)"),
    ("fashion_mnist", lambda r: data.fashion_mnist(root=r), "FashionMNIST/raw",
     "sudo apt-get install dataset-fashion-mnist"),
    ("svhn", lambda r: data.svhn("test", root=r), "SVHN/test_32x32.mat", "d.svhn('test', download=True)"),
    ("cifar10", lambda r: data.cifar10(root=r), "cifar-10-batches-py", "d.cifar10(download=True)"),
])
def test_missing_dataset_error(tmp_path: Path, name: str, call, where: str, command: str) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        call(tmp_path)
    message = str(info.value)
    assert f"'{name}'" in message
    assert str(tmp_path / where) in message
    assert command in message
    assert isinstance(info.value, FileNotFoundError) and info.value.dataset == name


def test_missing_dataset_error_via_pytest_match(tmp_path: Path) -> None:
    searched = re.escape(str(tmp_path / "FashionMNIST" / "raw"))
    with pytest.raises(DatasetNotFoundError, match=rf"(?s)fashion_mnist.*{searched}.*apt-get install"):
        data.load_images("fashion_mnist", root=tmp_path)


# ----------------------------------------------------------------------------------------
# Offline generated / bundled sets, subsets, dispatcher


def test_digits_split_is_disjoint_and_complete() -> None:
    from sklearn.datasets import load_digits

    train, test = data.digits(train=True), data.digits(train=False)
    check_image_tensors(train, 1438, (1, 8, 8))
    check_image_tensors(test, 359, (1, 8, 8))
    assert train.x.max().item() == 1.0
    # together the two parts are exactly the 1,797 images (as a multiset): a partition
    full = torch.as_tensor(load_digits().images, dtype=torch.float32).flatten(1) / 16
    w = torch.randn(64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    key = lambda x: torch.sort(x.double() @ w).values  # noqa: E731
    assert torch.allclose(key(torch.cat([train.x, test.x]).flatten(1)), key(full))
    assert torch.bincount(test.y, minlength=10).min() >= 34  # stratified: ≈ 36 per class


def test_mnist1d_shapes_and_determinism() -> None:
    state = np.random.get_state()[1].copy()
    a = data.mnist1d(train=True, n_train=200, n_test=50, seed=3)
    b = data.mnist1d(train=True, n_train=200, n_test=50, seed=3)
    t = data.mnist1d(train=False, n_train=200, n_test=50, seed=3)
    assert a.x.shape == (200, 1, 40) and a.x.dtype == torch.float32 and a.y.dtype == torch.int64
    assert t.x.shape == (50, 1, 40)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert set(a.y.tolist()) == set(range(10))
    assert np.array_equal(np.random.get_state()[1], state)  # global numpy RNG left alone


def test_subset_is_deterministic_and_stratified() -> None:
    y = torch.arange(1000) % 4
    d = ImageTensors(torch.arange(1000, dtype=torch.float32).reshape(1000, 1, 1, 1), y, ("a", "b", "c", "d"), "t")
    s1, s2, s3 = data.subset(d, 100, seed=1), data.subset(d, 100, seed=1), data.subset(d, 100, seed=2)
    assert torch.equal(s1.x, s2.x) and not torch.equal(s1.x, s3.x)
    assert torch.bincount(s1.y).tolist() == [25, 25, 25, 25]
    assert len(torch.unique(s1.x)) == 100  # no repeats
    assert torch.equal(s1.y, d.y[s1.x.flatten().long()])  # labels travel with their images
    assert data.subset(d, 5000) is d
    uniform = data.subset(d, 100, seed=1, stratified=False)
    assert uniform.x.shape == (100, 1, 1, 1)


def test_load_images_dispatch(tmp_path: Path) -> None:
    write_mnist_like(tmp_path / "MNIST" / "raw", n_train=30)
    d = data.load_images("mnist", root=tmp_path, n_examples=10)
    assert d.x.shape == (10, 1, 28, 28)
    with pytest.raises(ValueError, match="unknown image data set"):
        data.load_images("imagenet")


def test_prepare_without_apt_or_text_reports_missing(tmp_path: Path) -> None:
    report = prepare.prepare(tmp_path, apt=False, text=False)
    assert any("fashion_mnist: NOT available" in line and "apt-get install" in line for line in report)


# ----------------------------------------------------------------------------------------
# The real Debian Fashion-MNIST


@pytest.mark.skipif(not HAS_DEBIAN_FASHION, reason="Debian package dataset-fashion-mnist not installed")
def test_debian_fashion_mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIRS", [DEBIAN_FASHION])
    train = data.fashion_mnist(train=True, root=tmp_path)
    test = data.fashion_mnist(train=False, root=tmp_path)
    check_image_tensors(train, 60000, (1, 28, 28))
    check_image_tensors(test, 10000, (1, 28, 28))
    assert torch.bincount(train.y, minlength=10).tolist() == [6000] * 10
    assert torch.bincount(test.y, minlength=10).tolist() == [1000] * 10
    assert abs(train.x.mean().item() - 0.286) < 0.01

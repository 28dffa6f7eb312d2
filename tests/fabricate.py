"""Tiny data sets in each real on-disk format (IDX, SVHN .mat, CIFAR-10 pickles) for the tests.

With ``learnable=True`` the pixel intensities depend on the label (class c is brighter
for larger c), so a model can reach easy training goals in a few steps.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np


def _pixels(rng: np.random.Generator, labels: np.ndarray, shape: tuple[int, ...], learnable: bool) -> np.ndarray:
    if not learnable:
        return rng.integers(0, 256, (len(labels), *shape), dtype=np.uint8)
    base = (labels.reshape(-1, *([1] * len(shape))) * 25).astype(float)
    return np.clip(base + rng.normal(0, 20, (len(labels), *shape)), 0, 255).astype(np.uint8)


def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX (LeCun): magic 0x0000 08 <ndim> big-endian, the dims as big-endian uint32, uint8 data."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def write_mnist_like(raw: Path, n_train: int = 12, n_test: int = 5, gz: bool = True,
                     seed: int = 0, learnable: bool = False) -> dict[str, np.ndarray]:
    """The four IDX files of a tiny MNIST-format data set; returns the arrays written."""
    rng = np.random.default_rng(seed)
    raw.mkdir(parents=True, exist_ok=True)
    train_labels = (np.arange(n_train) % 10).astype(np.uint8)
    test_labels = (np.arange(n_test)[::-1] % 10).astype(np.uint8)
    arrays = {
        "train-images-idx3-ubyte": _pixels(rng, train_labels, (28, 28), learnable),
        "train-labels-idx1-ubyte": train_labels,
        "t10k-images-idx3-ubyte": _pixels(rng, test_labels, (28, 28), learnable),
        "t10k-labels-idx1-ubyte": test_labels,
    }
    for name, arr in arrays.items():
        write_idx(raw / (f"{name}.gz" if gz else name), arr)
    return arrays


def write_svhn_mat(path: Path, n: int = 7, seed: int = 0, learnable: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """An SVHN ``*_32x32.mat``: X uint8 [32, 32, 3, n], y [n, 1] in 1..10 (10 = digit 0)."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 10 + 1).astype(np.uint8).reshape(n, 1)  # 1..10
    X = np.moveaxis(_pixels(rng, y.ravel() % 10, (32, 32, 3), learnable), 0, -1)
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(str(path), {"X": X, "y": y})
    return X, y


def write_cifar10(folder: Path, n_per_batch: int = 4, seed: int = 0, learnable: bool = False) -> dict[str, dict]:
    """The seven files of ``cifar-10-batches-py`` in the real pickle format (tiny batches).

    The real batches are Python 2 pickles whose keys are py2 ``str``; read with
    ``encoding="latin1"`` (as torchvision does) they come back as ``str`` keys, which is
    what a protocol-2 pickle of ``str`` keys written here gives too. ``data`` is uint8
    ``[n, 3072]`` (per image 1024 red, 1024 green, 1024 blue values), ``labels`` a list.
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(names):
        labels = np.array([(k + i) % 10 for i in range(n_per_batch)])
        batch = {"batch_label": f"{name} of 6",
                 "labels": [int(c) for c in labels],
                 "data": _pixels(rng, labels, (3072,), learnable),
                 "filenames": [f"{name}_{i}.png" for i in range(n_per_batch)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        written[name] = batch
    meta = {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog",
                            "frog", "horse", "ship", "truck"],
            "num_cases_per_batch": n_per_batch, "num_vis": 3072}
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return written

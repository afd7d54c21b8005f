"""Image data for chapter 6, offline: sklearn's 8×8 digits (tiny) or Fashion-MNIST from a Debian package (full).

Both come back as float tensors standardised with the training split's statistics,
``x̂ = (x − mean_train) / std_train``, shaped (N, 1, H, W), and int64 labels (N,).

Defined in the foundation (data); chapter 6 (UPDP depth pruning) trains on it.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

FASHION_DIR_ENV = "MINILLM_FASHION_MNIST"
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                 "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


@dataclass(frozen=True)
class ImageData:
    """Train / validation / test splits; validation is carved from the training set (used by the search)."""

    name: str
    x_train: torch.Tensor  # (N, 1, H, W)
    y_train: torch.Tensor  # (N,)
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def image_size(self) -> int:
        return int(self.x_train.shape[-1])

    def describe(self) -> str:
        return (f"{self.name}: {self.image_size}×{self.image_size} images, train {len(self.y_train)}, "
                f"val {len(self.y_val)}, test {len(self.y_test)}")


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (optionally gzipped): magic ``0 0 dtype ndim``, big-endian int32 dims, then data."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (magic {raw[:4]!r}).")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4)
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {tuple(dims)} but holds {data.size} values (truncated?).")
    return data.reshape(tuple(int(d) for d in dims))


def _standardise(x_train: np.ndarray, *others: np.ndarray) -> list[torch.Tensor]:
    mean, std = float(x_train.mean()), float(x_train.std())
    return [torch.from_numpy(((x - mean) / std).astype(np.float32)) for x in (x_train, *others)]


def _split(x: np.ndarray, y: np.ndarray, n_val: int, seed: int):
    order = np.random.default_rng(seed).permutation(len(y))
    val, train = order[:n_val], order[n_val:]
    return x[train], y[train], x[val], y[val]


def load_digits_data(seed: int = 0) -> ImageData:
    """sklearn's 1,797 handwritten digits (8×8, 17 grey levels): 60 % train, 15 % val, 25 % test."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = digits.images.astype(np.float32)[:, None]  # (1797, 1, 8, 8)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = len(y) // 4
    x_rest, y_rest = x[order[n_test:]], y[order[n_test:]]
    x_tr, y_tr, x_va, y_va = _split(x_rest, y_rest, len(y) * 15 // 100, seed + 1)
    x_tr, x_va, x_te = _standardise(x_tr, x_va, x[order[:n_test]])
    return ImageData("digits", x_tr, torch.from_numpy(y_tr), x_va, torch.from_numpy(y_va), x_te,
                     torch.from_numpy(y[order[:n_test]]))


def fashion_mnist_dir() -> Path:
    """Where the Fashion-MNIST IDX files live (``$MINILLM_FASHION_MNIST`` or the Debian package's folder)."""
    folder = Path(os.environ.get(FASHION_DIR_ENV, FASHION_DIR))
    missing = [name for pair in FASHION_FILES.values() for name in pair if not (folder / name).exists()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST is missing from {folder} ({', '.join(missing)}). Install it with\n"
            "  sudo apt-get install dataset-fashion-mnist\n"
            f"or point ${FASHION_DIR_ENV} at a folder holding the four IDX .gz files.")
    return folder


def load_fashion_mnist(n_val: int = 5000, seed: int = 0) -> ImageData:
    """Fashion-MNIST (28×28, 10 classes): 55,000 train, 5,000 val (from train), 10,000 test."""
    folder = fashion_mnist_dir()
    arrays = {split: (read_idx(folder / imgs).astype(np.float32)[:, None] / 255.0,
                      read_idx(folder / labels).astype(np.int64))
              for split, (imgs, labels) in FASHION_FILES.items()}
    x_tr, y_tr, x_va, y_va = _split(*arrays["train"], n_val, seed)
    x_tr, x_va, x_te = _standardise(x_tr, x_va, arrays["test"][0])
    return ImageData("fashion-mnist", x_tr, torch.from_numpy(y_tr), x_va, torch.from_numpy(y_va), x_te,
                     torch.from_numpy(arrays["test"][1]))


def load_image_data(name: str, seed: int = 0) -> ImageData:
    """``"digits"`` (tiny profile) or ``"fashion-mnist"`` (full profile)."""
    loaders = {"digits": load_digits_data, "fashion-mnist": load_fashion_mnist}
    if name not in loaders:
        raise ValueError(f"unknown image data set {name!r}; choose one of {sorted(loaders)}.")
    return loaders[name](seed=seed)

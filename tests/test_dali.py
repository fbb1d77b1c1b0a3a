"""data.decode=dali (bnrepro/data/dali.py) on DALI's CPU backend: the CPU loader's labels, order,
sharding and resume position, its crops and flips (read back from the pixels), its colour
parameters (applied later on the device, as for every loader), and the centre crop at evaluation. Needs the `dali` extra (pip install -e '.[dali]'; CI installs it).
"""

from __future__ import annotations

import os
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from bnrepro import data as D
from bnrepro.config import compose
from bnrepro.data.dali import DaliLoader, DaliMissingError

try:
    import nvidia.dali  # noqa: F401

    HAVE_DALI = True
except ImportError as err:
    if os.environ.get("BNREPRO_REQUIRE_DALI") == "1":  # CI installs the extra: fail, never skip
        raise ImportError(f"BNREPRO_REQUIRE_DALI=1 but DALI is missing: {err}") from err
    HAVE_DALI = False
needs_dali = pytest.mark.skipif(not HAVE_DALI, reason="needs NVIDIA DALI: pip install -e '.[dali]'")

CLASSES = ["n01000001", "n01000002", "n01000003"]
SIZES = [(160, 120), (120, 160), (200, 100), (130, 130)]  # (width, height): varied aspects


def gradient(width: int, height: int) -> np.ndarray:
    """R = x, G = y (0-255 over the image), B flat: a crop's box and flip can be read back from
    its pixels (its left and right column's R, its top and bottom row's G)."""
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    return np.stack([x, y, np.full_like(x, 128)], -1).round().astype(np.uint8)


def gradient_tree(tmp_path) -> str:
    """root/train/<wnid>/*.JPEG (3 classes x 8) and root/val/<wnid>/*.JPEG (3 x 2), quality 95."""
    root = tmp_path / "gradients"
    for c, wnid in enumerate(CLASSES):
        for split, count in (("train", 8), ("val", 2)):
            (root / split / wnid).mkdir(parents=True)
            for k in range(count):
                w, h = SIZES[(c + k) % len(SIZES)]
                path = root / split / wnid / f"{split}_{c}_{k}.JPEG"
                Image.fromarray(gradient(w, h)).save(path, quality=95)
    return str(root)


def dali_cfg(root: str, *extra: str):
    overrides = ["data=imagenet", f"data.root={root}", "data.num_classes=3", "data.batch_size=4",
                 "data.num_workers=0", "data.train_crop=32", "data.eval_resize=36",
                 "data.eval_crop=32", "data.shuffle=full", *extra]  # fmt: skip
    return compose("train", overrides).data


def batches(cfg, ds, *, epoch: int, start_image: int = 0, rank: int = 0, world_size: int = 1):
    """One epoch of the loader data.decode picks, from global image `start_image` of its order."""
    loader = D.build_train_loader(cfg, ds, seed=0, rank=rank, world_size=world_size)
    loader.sampler.set_epoch(epoch, start_image=start_image)
    return list(loader)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> str:
    return gradient_tree(tmp_path_factory.mktemp("dali"))


@needs_dali
def test_the_switch_builds_dali_loaders(tree):
    cfg = dali_cfg(tree, "data.decode=dali")
    train_ds, val_ds, _ = D.build_datasets(cfg)
    assert isinstance(D.build_train_loader(cfg, train_ds, seed=0, rank=0, world_size=1), DaliLoader)
    assert isinstance(D.build_val_loader(cfg, val_ds, rank=0, world_size=1), DaliLoader)


@needs_dali
@pytest.mark.parametrize("world_size", [1, 2])
def test_labels_order_and_shards_are_the_cpu_loaders(tree, world_size):
    """Same seeds: every rank gets the CPU loader's labels and colour parameters in its order,
    and nearly its pixels (the same crops; decoders and resizers differ slightly)."""
    cpu_cfg = dali_cfg(tree, "data.augment.color_strength=0.5", "data.batch_size=2")
    cfg = dali_cfg(tree, "data.augment.color_strength=0.5", "data.batch_size=2", "data.decode=dali")
    ds, _, _ = D.build_datasets(cfg)
    for rank in range(world_size):
        for epoch in (0, 1):
            dali = batches(cfg, ds, epoch=epoch, rank=rank, world_size=world_size)
            cpu = batches(cpu_cfg, ds, epoch=epoch, rank=rank, world_size=world_size)
            assert len(dali) == len(cpu) == 24 // world_size // 2
            for (x, y, c), (u, v, w) in zip(dali, cpu, strict=True):
                assert x.shape == u.shape == (2, 3, 32, 32) and x.dtype == torch.uint8
                assert torch.equal(y, v) and torch.equal(c, w)
                assert (x.float() - u.float()).abs().mean() < 4


@needs_dali
def test_resume_position_is_the_cpu_loaders(tree):
    cfg = dali_cfg(tree, "data.decode=dali")
    ds, _, _ = D.build_datasets(cfg)
    whole = batches(cfg, ds, epoch=2)
    resumed = batches(cfg, ds, epoch=2, start_image=3 * cfg.batch_size)  # after 3 batches
    assert len(resumed) == len(whole) - 3
    for one, other in zip(whole[3:], resumed, strict=True):  # DALI itself draws nothing: exact
        assert all(torch.equal(a, b) for a, b in zip(one, other, strict=True))


def read_box(image: torch.Tensor, width: int, height: int) -> tuple[float, float, bool]:
    """(area fraction, aspect w/h, flipped) of a gradient crop, from its edge pixels."""
    r, g = image[0].float(), image[1].float()
    left, right = r[:, 0].mean().item(), r[:, -1].mean().item()
    top, bottom = g[0].mean().item(), g[-1].mean().item()
    flipped = left > right
    w = abs(right - left) * width / 255
    h = (bottom - top) * height / 255
    return w * h / (width * height), w / h, flipped


@needs_dali
def test_crop_area_aspect_and_flip_rates_match_the_cpu_loader(tree):
    """Over 8 epochs (192 crops): the boxes and flips read back from DALI's pixels have the CPU
    loader's statistics, and each crop is the CPU loader's own (per-sample agreement)."""
    cfg = dali_cfg(tree, "data.decode=dali", "data.augment.color_strength=0")
    cpu_cfg = dali_cfg(tree, "data.augment.color_strength=0")
    ds, _, _ = D.build_datasets(cfg)
    sizes = [Image.open(ds.split.path(i)).size for i in range(len(ds))]
    stats = {"dali": [], "cpu": []}
    for epoch in range(8):
        sampler = D.EpochSampler(len(ds), batch_size=4, seed=0, shuffle="full")
        sampler.set_epoch(epoch)
        order = [i for i, _, _ in sampler]
        for name, c in (("dali", cfg), ("cpu", cpu_cfg)):
            images = torch.cat([b.images for b in batches(c, ds, epoch=epoch)])
            stats[name] += [read_box(im, *sizes[i]) for im, i in zip(images, order, strict=True)]
    dali, cpu = np.array(stats["dali"]), np.array(stats["cpu"])
    assert (dali[:, 2] == cpu[:, 2]).all()  # every flip is the CPU loader's
    assert 0.35 < dali[:, 2].mean() < 0.65  # p = 1/2: 192 draws, > 4 sigma
    np.testing.assert_allclose(dali[:, :2], cpu[:, :2], rtol=0.15)  # each box, up to edge pixels
    assert 0.05 < dali[:, 0].min() and dali[:, 0].max() < 1.05  # 8-100% of the area
    assert 0.7 < np.exp(np.log(dali[:, 1]).mean()) < 1.4  # aspect log-uniform about 1
    assert abs(dali[:, 0].mean() - cpu[:, 0].mean()) < 0.02


@needs_dali
def test_evaluation_is_the_cpu_loaders_centre_crop(tree):
    cfg = dali_cfg(tree, "data.decode=dali")
    _, val_ds, _ = D.build_datasets(cfg)
    dali = list(D.build_val_loader(cfg, val_ds, rank=1, world_size=2))
    cpu = list(D.build_val_loader(dali_cfg(tree), val_ds, rank=1, world_size=2))
    assert [len(y) for _, y in dali] == [len(y) for _, y in cpu] == [3]  # 3 of 6, unpadded
    for (x, y), (u, v) in zip(dali, cpu, strict=True):
        assert torch.equal(y, v) and (x.float() - u.float()).abs().mean() < 3


@needs_dali
def test_unreadable_files_go_through_the_cpu_path(tree, tmp_path):
    import shutil

    root = tmp_path / "tree"
    shutil.copytree(tree, root)
    (root / "train" / CLASSES[0] / "broken.JPEG").write_bytes(b"garbage")  # no header
    good = (root / "train" / CLASSES[0] / "train_0_0.JPEG").read_bytes()
    (root / "train" / CLASSES[0] / "cut.JPEG").write_bytes(good[: len(good) // 3])  # truncated
    cfg = dali_cfg(str(root), "data.decode=dali")
    ds, _, _ = D.build_datasets(cfg)
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        dali = batches(cfg, ds, epoch=0)
    cpu = batches(dali_cfg(str(root)), D.build_datasets(dali_cfg(str(root)))[0], epoch=0)
    assert [b.labels.tolist() for b in dali] == [b.labels.tolist() for b in cpu]
    assert D.skipped_files(ds) >= 1


@needs_dali
def test_a_file_dali_refuses_goes_through_the_cpu_path_from_then_on(tree, tmp_path):
    """A GIF named .JPEG: the CPU path reads it, DALI's decoder refuses it (and fails its batch).
    The refusal is found once, remembered, and the file never offered to DALI again: no failed
    batch and no rebuilt pipeline in the next epoch. The other images keep DALI's crops."""
    import shutil

    root = tmp_path / "tree"
    shutil.copytree(tree, root)
    gif = root / "train" / CLASSES[1] / "train_1_0.JPEG"
    Image.open(gif).convert("P").save(gif, "GIF")
    cfg = dali_cfg(str(root), "data.decode=dali", "data.augment.color_strength=0.5")
    cpu_cfg = dali_cfg(str(root), "data.augment.color_strength=0.5")
    ds, _, _ = D.build_datasets(cfg)
    index = [ds.split.path(i) for i in range(len(ds))].index(str(gif))
    loader = D.build_train_loader(cfg, ds, seed=0, rank=0, world_size=1)
    pipes = []
    for epoch in (0, 1):
        loader.sampler.set_epoch(epoch)
        order = [i for i, _, _ in loader.sampler]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            dali = list(loader)
        refusals = [str(w.message) for w in caught if "DALI cannot decode" in str(w.message)]
        assert len(refusals) == (1 if epoch == 0 else 0) and loader.refused == {index}
        assert all(str(gif) in text for text in refusals)
        pipes.append(loader.pipe)
        cpu = batches(cpu_cfg, ds, epoch=epoch)
        at = order.index(index)
        for b, ((x, y, c), (u, v, w)) in enumerate(zip(dali, cpu, strict=True)):
            assert torch.equal(y, v) and torch.equal(c, w)
            assert (x.float() - u.float()).abs().mean() < 4
            if b == at // 4:  # its batch: the GIF is the CPU path's image, the others DALI's
                assert torch.equal(x[at % 4], u[at % 4])
                assert not all(torch.equal(x[k], u[k]) for k in range(4) if k != at % 4)
    assert pipes[0] is pipes[1]  # epoch 1 rebuilt nothing
    assert D.skipped_files(ds) == 0  # readable: not a bad file


def test_without_dali_the_switch_names_the_install(tree, monkeypatch):
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # as if not installed
    cfg = dali_cfg(tree, "data.decode=dali")
    train_ds, _, _ = D.build_datasets(cfg)
    with pytest.raises(DaliMissingError, match=r"pip install -e '\.\[dali\]'"):
        D.build_train_loader(cfg, train_ds, seed=0, rank=0, world_size=1)

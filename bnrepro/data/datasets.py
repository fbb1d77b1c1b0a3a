"""Datasets: image files through the paper's transforms, in-memory MNIST, and `build_datasets`.

An unreadable file (corrupt, truncated, not an image) is skipped in one place,
`ImageFiles.try_load`: marked bad in a shared-memory flag that every worker process sees, warned
about once with its path, and counted (`skipped_files`). Training replaces it by the next readable
file; evaluation leaves it out.

A training sample is (uint8 image, label, colour parameters): the image cropped, resized and
flipped, its colour distortion still to come (transforms.color_params); `collate_train` makes a
`TrainBatch` of them, whose colour the training process applies on its device
(engine.Runtime.inputs). An evaluation sample is (uint8 image, label).
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable
from typing import NamedTuple, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Dataset

from bnrepro import distributed
from bnrepro.data import transforms as T
from bnrepro.data.layouts import Split, find_imagenet, tars_only, unpack_tars
from bnrepro.data.mnist import load_mnist
from bnrepro.data.synthetic import ensure_tree
from bnrepro.errors import ConfigError, DataError

MAX_BAD_IN_A_ROW = 32  # this many unreadable files in a row means a broken tree, not bad luck
TAG_SHUFFLE, TAG_SHARDS, TAG_AUGMENT = 1, 2, 3  # keep the random streams apart

Loaded = TypeVar("Loaded")


class TrainBatch(NamedTuple):
    """A training batch as every training loader yields it (data.decode=cpu, gpu, dali)."""

    images: torch.Tensor  # uint8 [B, C, H, W]: cropped, resized and flipped, not yet coloured
    labels: torch.Tensor  # int64 [B]
    color: torch.Tensor  # float32 [B, 5] on the CPU: each image's transforms.color_params row

    @classmethod
    def without_color(cls, images: torch.Tensor, labels: torch.Tensor) -> TrainBatch:
        """A batch whose images get no colour distortion (benchmarks, tests)."""
        return cls(images, labels, torch.tensor([T.NO_COLOR] * len(labels)))


def collate_train(samples: list[tuple[torch.Tensor, int, tuple[float, ...]]]) -> TrainBatch:
    """A DataLoader's training samples (image, label, colour parameters) as one TrainBatch."""
    images, labels, color = zip(*samples, strict=True)
    return TrainBatch(
        torch.stack(images),
        torch.tensor(labels, dtype=torch.int64),
        torch.tensor(color, dtype=torch.float32),
    )


def augment_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The random stream of one training sample's augmentation: a function of (seed, epoch,
    index) only, so the worker count and the decode path never change a crop."""
    return np.random.default_rng([seed, epoch, index, TAG_AUGMENT])


class ImageFiles(Dataset):
    """Image files through a transform. A key is an index, or (index, epoch, seed) from the
    training sampler: the augmentation's randomness comes from that triple only. Training gives
    (image, label, colour parameters), evaluation (image, label)."""

    def __init__(self, split: Split, transform: T.TrainTransform | T.EvalTransform):
        self.split, self.transform = split, transform
        self.train = isinstance(transform, T.TrainTransform)
        self.bad = torch.zeros(len(split.files), dtype=torch.bool).share_memory_()

    def __len__(self) -> int:
        return len(self.split.files)

    def __getitem__(self, key: int | tuple[int, int, int]) -> tuple:
        index, epoch, seed = key if isinstance(key, tuple) else (key, 0, 0)
        for attempt in range(MAX_BAD_IN_A_ROW):
            i = (index + attempt) % len(self)
            loaded = self.try_load(i, functools.partial(self._transform, i, epoch, seed))
            if loaded is not None:
                label = int(self.split.labels[i])
                return (loaded[0], label, loaded[1]) if self.train else (loaded, label)
        folder = os.path.dirname(self.split.path(index))
        raise DataError(
            f"{MAX_BAD_IN_A_ROW} unreadable images in a row from {self.split.path(index)} on, in "
            f"{folder}: data.root={self.split.root} does not hold readable images there (each one "
            "is warned about with its error); restore or remove those files, or point data.root "
            "at an intact copy"
        )

    def _transform(self, i: int, epoch: int, seed: int, data: bytes):
        if self.train:
            return self.transform(data, augment_rng(seed, epoch, i))
        return self.transform(data)

    def read(self, i: int) -> bytes:
        with open(self.split.path(i), "rb") as f:
            return f.read()

    def try_load(self, i: int, load: Callable[[bytes], Loaded]) -> Loaded | None:
        """load(file bytes of image i), or None if the file is unreadable: then it is marked bad,
        warned about once (with its path) and counted; a file marked bad is not read again."""
        if self.bad[i]:
            return None
        try:
            return load(self.read(i))
        except Exception as err:  # noqa: BLE001 - any reader or decoder error means "skip this file"
            if not self.bad[i]:
                self.bad[i] = True
                warnings.warn(
                    f"skipping unreadable image {self.split.path(i)}: {err}", stacklevel=2
                )
            return None


class ArrayImages(Dataset):
    """In-memory uint8 images [N, C, H, W] (MNIST): no decoding, and no augmentation whatever
    data.augment says (the experiments' crop and colour settings are for photographs). A
    training set (`train`) gives (image, label, NO_COLOR), as ImageFiles' training samples."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, train: bool = False):
        self.images, self.labels, self.train = images, labels, train
        self.bad = torch.zeros(0, dtype=torch.bool)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int | tuple[int, int, int]) -> tuple:
        index = key[0] if isinstance(key, tuple) else key
        image, label = self.images[index], int(self.labels[index])
        return (image, label, T.NO_COLOR) if self.train else (image, label)


class WholeImages(Dataset):
    """A val set's images decoded whole (uint8 [C, H, W]) with their labels, for test-time crops
    cut later on the device from this one decode (bnrepro-ensemble). An unreadable file gives
    None: left out, warned about and counted (`try_load`), never replaced by another image."""

    def __init__(self, val_ds: ImageFiles | ArrayImages, limit: int | None = None) -> None:
        self.val_ds = val_ds
        self.n = len(val_ds) if limit is None else min(limit, len(val_ds))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, int]:
        if not isinstance(self.val_ds, ImageFiles):  # in-memory images (MNIST)
            return self.val_ds[i]
        image = self.val_ds.try_load(i, T.decode)  # RGB uint8 [H, W, 3]
        label = int(self.val_ds.split.labels[i])
        return (None if image is None else torch.from_numpy(image).permute(2, 0, 1)), label


def skipped_files(dataset: Dataset) -> int:
    """How many unreadable files the dataset has skipped so far (all worker processes)."""
    return int(dataset.bad.sum())


def _mnist(cfg: DictConfig) -> tuple[ArrayImages, ArrayImages, list[str]]:
    if cfg.in_chans != 1 or cfg.train_crop != cfg.eval_crop:
        raise ConfigError("data=mnist needs data.in_chans=1 and data.train_crop == data.eval_crop")
    arrays = load_mnist(cfg.root)
    out = []
    for split in ("train", "test"):
        x = torch.from_numpy(arrays[f"x_{split}"]).unsqueeze(1).float()
        x = F.interpolate(x, size=(cfg.train_crop, cfg.train_crop), mode="bilinear", antialias=True)
        images = x.round().clamp(0, 255).to(torch.uint8)
        labels = torch.from_numpy(arrays[f"y_{split}"]).long()
        out.append(ArrayImages(images, labels, train=split == "train"))
    return out[0], out[1], [str(d) for d in range(10)]


def find_imagenet_once(
    root: str, *, rank: int = 0, local_rank: int = 0, world_size: int = 1
) -> tuple[Split, Split, list[str]]:
    """find_imagenet on rank 0 alone, its listing sent to every rank: one scan of the training
    tree (1.28M files on a shared file system), not one per rank at the same time; the tars, if
    that is the layout, unpacked by rank 0 first. Then the first process of each node that still
    sees only the tars (a node-local copy) unpacks them too, every rank waiting for it. Every
    node's data.root must hold the same files (a shared file system or identical copies)."""
    listing = distributed.from_rank0(lambda: find_imagenet(root), rank, world_size)
    if world_size > 1:
        distributed.once_per_node(
            lambda: unpack_tars(root) if tars_only(root) else None, local_rank, world_size
        )
    return listing


def build_datasets(
    data_cfg: DictConfig, *, rank: int = 0, local_rank: int = 0, world_size: int = 1
) -> tuple[Dataset, Dataset, list[str]]:
    """(train_ds, val_ds, classes) for data.name imagenet | synthetic | mnist. With several
    processes (the ranks of distributed.setup) the file listing is made once and shared
    (find_imagenet_once)."""
    cfg = data_cfg
    if cfg.name == "mnist":
        return _mnist(cfg)
    if OmegaConf.is_missing(cfg, "root") or cfg.root is None:
        raise ConfigError("data.root is not set: data.root=/path/to/imagenet")
    if cfg.in_chans != 3 or len(cfg.mean) != 3 or len(cfg.std) != 3:
        raise ConfigError(f"data={cfg.name} is RGB: set data.in_chans=3 and 3-value mean and std")
    if cfg.name == "synthetic":
        ensure_tree(cfg.root, num_classes=cfg.num_classes, **cfg.synthetic)
    train, val, classes = find_imagenet_once(
        cfg.root, rank=rank, local_rank=local_rank, world_size=world_size
    )
    if len(classes) != cfg.num_classes:
        raise ConfigError(
            f"{cfg.root} has {len(classes)} classes but data.num_classes={cfg.num_classes}: "
            f"set data.num_classes={len(classes)}"
        )
    try:
        aug = T.Augment(**cfg.augment)
    except TypeError as err:
        keys = list(T.Augment.__dataclass_fields__)
        raise ConfigError(f"data.augment: {err}; its keys are {keys}") from err
    train_ds = ImageFiles(train, T.TrainTransform(cfg.train_crop, aug))
    val_ds = ImageFiles(val, T.EvalTransform(cfg.eval_resize, cfg.eval_crop))
    return train_ds, val_ds, classes

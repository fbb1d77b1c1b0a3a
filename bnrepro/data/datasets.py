"""Datasets: image files through the paper's transforms, in-memory MNIST, and `build_datasets`.

An unreadable file (corrupt, truncated, not an image) is skipped in one place,
`ImageFiles.try_load`: marked bad in a shared-memory flag that every worker process sees, warned
about once with its path, and counted (`skipped_files`). Training replaces it by the next readable
file; evaluation leaves it out (a val item is then `(None, label)`; the val loaders drop it).

A training sample is (uint8 image, label, colour parameters): the image cropped, resized and
flipped, its colour distortion still to come (transforms.color_params); `collate_train` makes a
`TrainBatch` of them, whose colour the training process applies on its device
(engine.Runtime.inputs). An evaluation sample is (uint8 image, label).

`identify(data_cfg)` says what `build_datasets` will read (class list, file counts, a fingerprint
of the file lists: `DataIdentity`) from the file lists alone, writing nothing: a run checks it
against its checkpoint and its other ranks before it generates or writes anything.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Dataset

from bnrepro import distributed
from bnrepro.data import synthetic
from bnrepro.data import transforms as T
from bnrepro.data.layouts import Split, class_names, find_imagenet, tars_only, unpack_tars
from bnrepro.data.mnist import load_mnist
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
        if not self.train:  # evaluation counts each readable file once: an unreadable one is out
            load = functools.partial(self._transform, index, epoch, seed)
            return self.try_load(index, load), int(self.split.labels[index])
        for attempt in range(MAX_BAD_IN_A_ROW):
            i = (index + attempt) % len(self)
            loaded = self.try_load(i, functools.partial(self._transform, i, epoch, seed))
            if loaded is not None:
                return loaded[0], int(self.split.labels[i]), loaded[1]
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


@dataclass(frozen=True)
class DataIdentity:
    """What a run's data is, from its file lists alone: the class list, and per split the number
    of files and a fingerprint (Split.fingerprint: paths relative to data.root and labels, so the
    same on every copy of the same files). DDP ranks compare it, and a checkpoint keeps it so
    that a resume can (`record`, `data_changes`)."""

    classes: tuple[str, ...]
    train_files: int
    train_sha256: str
    val_files: int
    val_sha256: str
    found: tuple | None = field(default=None, compare=False, repr=False)  # the splits, if listed
    sample: str = field(default="", compare=False)  # this rank's own look (_local_sample)

    def record(self) -> dict:
        """What a checkpoint stores (its data.identity)."""
        keys = ("train_files", "train_sha256", "val_files", "val_sha256")
        return {k: getattr(self, k) for k in keys}


def data_changes(then: dict, now: dict, words: tuple[str, str] = ("then", "now")) -> list[str]:
    """How the data of record `now` differs from `then` (DataIdentity.record's), in words (the
    two named by `words`): the training set first, then the val set; [] for the same files."""
    changes = []
    for split in ("train", "val"):
        files = (then[f"{split}_files"], now[f"{split}_files"])
        if files[0] != files[1]:
            changes.append(f"{split}: {files[0]} files {words[0]}, {files[1]} {words[1]}")
        elif then[f"{split}_sha256"] != now[f"{split}_sha256"]:
            changes.append(f"{split}: as many files ({files[0]}), but other names or labels")
    return changes


def _identity(classes, train: Split | Dataset, val: Split | Dataset, found=None) -> DataIdentity:
    return DataIdentity(tuple(classes), *_files_of(train), *_files_of(val), found=found)


def identity_of(train_ds: Dataset, val_ds: Dataset, classes: list[str]) -> DataIdentity:
    """The DataIdentity of built datasets (build_datasets')."""
    splits = [ds.split if isinstance(ds, ImageFiles) else ds for ds in (train_ds, val_ds)]
    return _identity(classes, *splits)


def _files_of(split: Split | ArrayImages) -> tuple[int, str]:
    """(count, fingerprint) of a split's files, or of in-memory images (MNIST: their bytes)."""
    if isinstance(split, Split):
        return len(split.files), split.fingerprint()
    digest = hashlib.sha256(split.images.numpy().tobytes())
    digest.update(split.labels.numpy().tobytes())
    return len(split), digest.hexdigest()


def identify(
    data_cfg: DictConfig, *, rank: int = 0, local_rank: int = 0, world_size: int = 1
) -> DataIdentity:
    """What build_datasets(data_cfg) will read, found without writing anything: ImageNet's file
    lists (made once, by rank 0: find_imagenet_once; its `sample` is this rank's own look at the
    files rank 0 listed); a synthetic tree's own, listed by each rank (a small tree), or, not
    generated yet, those its parameters give (synthetic.planned_files). Refuses (DataError,
    ConfigError, NotASyntheticTree) what build_datasets would refuse. DDP ranks compare the
    result (builders.check_same_data); every rank calls it, its collectives depend on data.name
    alone."""
    cfg = data_cfg
    if cfg.name == "mnist":
        train_ds, val_ds, classes = _mnist(cfg)
        return _identity(classes, train_ds, val_ds)
    _check_image_data(cfg)
    if cfg.name == "synthetic":
        params = synthetic.tree_params(num_classes=cfg.num_classes, **cfg.synthetic)
        if synthetic.tree_state(cfg.root, params) != "ready":  # generated later, by build_datasets
            classes, train, val = synthetic.planned_files(params)
            root = Path(cfg.root).expanduser()
            splits = [Split.of(root, [p for p, _ in s], [c for _, c in s]) for s in (train, val)]
            return _identity(classes, *splits)
        found = _listed(cfg.root)
    else:
        found = find_imagenet_once(
            cfg.root, rank=rank, local_rank=local_rank, world_size=world_size
        )
    train, val, classes = found
    _check_classes(cfg, classes)
    identity = _identity(classes, train, val, found=found)
    if world_size == 1 or cfg.name == "synthetic":
        return identity
    return dataclasses.replace(identity, sample=_local_sample(train, val))


SAMPLED = 64  # files per split whose size each rank checks against rank 0's listing [ours]


def _local_sample(train: Split, val: Split) -> str:
    """This rank's look at the files rank 0 listed, cheap (one directory listing, 2 x SAMPLED
    stats): the class folders it sees and the sizes of evenly spaced files (-1: missing). Equal
    on every rank of a shared or identical copy; an incomplete node-local copy differs unless
    what it lacks falls between the samples."""
    digest = hashlib.sha256("\n".join(class_names(Path(train.root) / "train")).encode())
    for split in (train, val):
        for i in np.linspace(0, len(split.files) - 1, min(SAMPLED, len(split.files)), dtype=int):
            try:
                size = os.stat(split.path(int(i))).st_size
            except OSError:
                size = -1
            digest.update(f"{i}:{size};".encode())
    return digest.hexdigest()


def _check_readable(split: Split, name: str) -> None:
    """DataError when the first MAX_BAD_IN_A_ROW files of a split (all of a smaller one) are
    unreadable, the rule training itself applies: a broken copy is refused at start-up, before
    anything is written, rather than at its first batch or evaluation. Reads one file normally."""
    errors = []
    if not len(split.files):  # an empty split is refused where it is listed
        return
    for i in range(min(MAX_BAD_IN_A_ROW, len(split.files))):
        try:
            with open(split.path(i), "rb") as f:
                T.image_size(f.read(1 << 16))  # the header: cheap, and what every reader needs
            return
        except Exception as err:  # noqa: BLE001 - any reader error: this file is unreadable
            errors.append(f"{split.path(i)}: {err}")
    raise DataError(
        f"the first {len(errors)} {name} files under data.root={split.root} are all unreadable "
        f"(e.g. {errors[0]}): restore them, or point data.root at an intact copy"
    )


def _check_image_data(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg, "root") or cfg.root is None:
        raise ConfigError("data.root is not set: data.root=/path/to/imagenet")
    if cfg.in_chans != 3 or len(cfg.mean) != 3 or len(cfg.std) != 3:
        raise ConfigError(f"data={cfg.name} is RGB: set data.in_chans=3 and 3-value mean and std")
    _transforms(cfg)  # their settings too, before a tree is generated


def _check_classes(cfg: DictConfig, classes: list[str]) -> None:
    if len(classes) != cfg.num_classes:
        raise ConfigError(
            f"{cfg.root} has {len(classes)} classes but data.num_classes={cfg.num_classes}: "
            f"set data.num_classes={len(classes)}"
        )


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
    node's data.root must hold the same files (a shared file system or identical copies); each
    rank reads its own data.root with that listing, and a run compares a sample of what each
    rank sees (identify, builders.check_same_data)."""
    train, val, classes = distributed.from_rank0(lambda: _listed(root), rank, world_size)
    if world_size > 1:
        distributed.once_per_node(
            lambda: unpack_tars(root) if tars_only(root) else None, local_rank, world_size
        )
        # Rank 0's listing, of this rank's own data.root (a node-local copy may lie elsewhere).
        own = Path(root).expanduser()
        kaggle = own / "ILSVRC" / "Data" / "CLS-LOC"
        own = kaggle if Path(train.root).parts[-3:] == kaggle.parts[-3:] else own
        train, val = (dataclasses.replace(split, root=str(own)) for split in (train, val))
    return train, val, classes


def _listed(root: str) -> tuple[Split, Split, list[str]]:
    """find_imagenet, and neither split all unreadable (_check_readable)."""
    train, val, classes = find_imagenet(root)
    for name, split in (("train", train), ("val", val)):
        _check_readable(split, name)
    return train, val, classes


def build_datasets(
    data_cfg: DictConfig,
    identity: DataIdentity | None = None,
    *,
    rank: int = 0,
    local_rank: int = 0,
    world_size: int = 1,
) -> tuple[Dataset, Dataset, list[str]]:
    """(train_ds, val_ds, classes) for data.name imagenet | synthetic | mnist. With several
    processes (the ranks of distributed.setup) the file listing is made once and shared
    (find_imagenet_once). With `identity` (identify's, made at start-up): the file lists it
    found are reused, and data that is not what it describes (changed since) is refused."""
    cfg = data_cfg
    if cfg.name == "mnist":
        return _mnist(cfg)
    _check_image_data(cfg)
    if identity is not None and identity.found is not None:
        train, val, classes = identity.found
        if cfg.name == "synthetic":  # no other process replaces it under this run from here on
            params = synthetic.tree_params(num_classes=cfg.num_classes, **cfg.synthetic)
            synthetic.hold_tree(cfg.root, params)
    else:
        if cfg.name == "synthetic":  # a small tree: every rank generates (once) and lists it
            synthetic.ensure_tree(cfg.root, num_classes=cfg.num_classes, **cfg.synthetic)
            train, val, classes = find_imagenet(cfg.root)
        else:
            train, val, classes = find_imagenet_once(
                cfg.root, rank=rank, local_rank=local_rank, world_size=world_size
            )
        _check_classes(cfg, classes)
        if identity is not None and _identity(classes, train, val) != identity:
            raise DataError(
                f"the data under data.root={cfg.root} changed while the run started (another "
                "process wrote there): run again once it is settled"
            )
    train_transform, eval_transform = _transforms(cfg)
    return ImageFiles(train, train_transform), ImageFiles(val, eval_transform), classes


def _transforms(cfg: DictConfig) -> tuple[T.TrainTransform, T.EvalTransform]:
    """The training and evaluation transforms of image data (ConfigError for settings they
    cannot follow: min_area > max_area, a crop larger than its resize)."""
    try:
        aug = T.Augment(**cfg.augment)
    except TypeError as err:
        keys = list(T.Augment.__dataclass_fields__)
        raise ConfigError(f"data.augment: {err}; its keys are {keys}") from err
    return T.TrainTransform(cfg.train_crop, aug), T.EvalTransform(cfg.eval_resize, cfg.eval_crop)

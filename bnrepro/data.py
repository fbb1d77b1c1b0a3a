"""ImageNet as researchers keep it, the synthetic stand-in and MNIST: datasets, samplers, loaders.

Layouts found under `data.root` (class index = position of the wnid in sorted order, the same for
all of them, so a checkpoint trained on one evaluates correctly on another):
  1. train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (ImageFolder);
  2. train/<wnid>/... and a flat val/ILSVRC2012_val_*.JPEG, labelled by Kaggle's
     LOC_val_solution.csv or by the extracted devkit (ILSVRC2012_devkit_t12/data/meta.mat and
     ILSVRC2012_validation_ground_truth.txt, whose ids are the devkit's, not sorted-wnid order);
     Kaggle's nesting root/ILSVRC/Data/CLS-LOC/{train,val} is found too;
  3. the original ILSVRC2012_img_{train,val}.tar and ILSVRC2012_devkit_t12.tar.gz, unpacked once
     by torchvision.datasets.ImageNet (after which the folder is layout 1).

Training order (section 4.2.1 "shuffle training examples more thoroughly"): data.shuffle=full
draws a new permutation of the whole set every epoch; data.shuffle=shards [ours] emulates a less
thorough pipeline: one fixed random order cut into shards of data.shard_size, each epoch visiting
the shards in a new order and shuffling only within them, so the same images keep sharing
batches. Under DDP each rank takes every world_size-th image of that order (DistributedSampler
semantics, remainder dropped so that every rank has the same number of batches).
"""

from __future__ import annotations

import csv
import functools
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset, Sampler

from bnrepro import transforms as T

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
DEVKIT = "ILSVRC2012_devkit_t12"
KAGGLE_CSV = "LOC_val_solution.csv"
TARS = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar", "ILSVRC2012_devkit_t12.tar.gz")
MAX_BAD_IN_A_ROW = 32  # this many unreadable files in a row means a broken tree, not bad luck
_TAG_SHUFFLE, _TAG_SHARDS, _TAG_AUGMENT = 1, 2, 3  # keep the random streams apart


@dataclass
class Split:
    """Image paths (relative to root, as a numpy bytes array: no per-string Python objects for
    forked workers to copy) and class indices."""

    root: str
    files: np.ndarray
    labels: np.ndarray

    @classmethod
    def of(cls, root: Path, paths: list[str], labels: list[int]) -> Split:
        """From paths relative to root (plain strings: ImageNet has 1.3M of them)."""
        files = np.array([p.encode() for p in paths], dtype=bytes)
        return cls(str(root), files, np.array(labels, dtype=np.int64))

    def path(self, i: int) -> str:
        return os.path.join(self.root, self.files[i].decode())


# ---------------------------------------------------------------- layouts


def find_imagenet(root: str | Path) -> tuple[Split, Split, list[str]]:
    """(train, val, classes) for whichever layout `root` holds; classes are the sorted wnids."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data.root={root} does not exist; point data.root at ImageNet")
    images = root / "ILSVRC" / "Data" / "CLS-LOC"  # Kaggle's download
    images = images if images.is_dir() else root
    unpacked = (images / "train").is_dir() and (images / "val").is_dir()
    if not unpacked and all((root / t).is_file() for t in TARS):
        return _from_tars(root)
    if not (images / "train").is_dir():
        raise FileNotFoundError(
            f"no train/ folder in {images}: expected train/<wnid>/*.JPEG (ImageFolder or Kaggle), "
            f"or the original tars {', '.join(TARS)} in {root}"
        )
    classes = sorted(d.name for d in os.scandir(images / "train") if d.is_dir())
    if not classes:
        raise FileNotFoundError(f"{images / 'train'} has no class folders (train/<wnid>/*.JPEG)")
    train = _class_folders(images / "train", classes, images)
    val_dir = images / "val"
    if not val_dir.is_dir():
        raise FileNotFoundError(f"no val/ folder in {images}")
    if any(d.is_dir() for d in os.scandir(val_dir)):
        folders = sorted(d.name for d in os.scandir(val_dir) if d.is_dir())
        val = _class_folders(val_dir, folders, images, classes)
    else:
        val = _flat_val(val_dir, images, classes, [root, images, val_dir])
    return train, val, classes


def _image_files(folder: Path) -> list[str]:
    """Names of the image files in `folder`, sorted."""
    return sorted(
        e.name
        for e in os.scandir(folder)
        if e.is_file() and not e.name.startswith(".") and e.name.lower().endswith(IMG_EXTENSIONS)
    )


def _class_folders(
    folder: Path, names: list[str], root: Path, classes: list[str] | None = None
) -> Split:
    index = {c: i for i, c in enumerate(classes or names)}
    paths, labels = [], []
    for name in names:
        if name not in index:
            raise ValueError(f"{folder / name} is a class that train/ does not have")
        files = _image_files(folder / name)
        if not files:
            raise FileNotFoundError(
                f"class folder {folder / name} has no images ({'/'.join(IMG_EXTENSIONS)}): "
                "remove it or restore its files"
            )
        prefix = os.path.relpath(folder / name, root)
        paths += [os.path.join(prefix, f) for f in files]
        labels += [index[name]] * len(files)
    return Split.of(root, paths, labels)


def _flat_val(val_dir: Path, root: Path, classes: list[str], search: list[Path]) -> Split:
    files = _image_files(val_dir)
    if not files:
        raise FileNotFoundError(f"{val_dir} has no images")
    csvs = [d / KAGGLE_CSV for d in search if (d / KAGGLE_CSV).is_file()]
    devkits = [d / DEVKIT for d in search if (d / DEVKIT / "data" / "meta.mat").is_file()]
    if csvs:
        wnid_of = _kaggle_labels(csvs[0])
        source = csvs[0]
    elif devkits:
        wnid_of = _devkit_labels(devkits[0])
        source = devkits[0]
    else:
        raise FileNotFoundError(
            f"{val_dir} is flat (no class folders) and has no labels: put Kaggle's {KAGGLE_CSV} or "
            f"the extracted devkit {DEVKIT}/ (data/meta.mat, "
            f"data/ILSVRC2012_validation_ground_truth.txt) in {search[0]}"
        )
    index = {c: i for i, c in enumerate(classes)}
    labels = []
    for f in files:
        wnid = wnid_of.get(f.rsplit(".", 1)[0])
        if wnid is None:
            raise ValueError(f"{source} has no label for {val_dir / f}")
        if wnid not in index:
            raise ValueError(f"{val_dir / f} is labelled {wnid} by {source}: not a class of train/")
        labels.append(index[wnid])
    prefix = os.path.relpath(val_dir, root)
    return Split.of(root, [os.path.join(prefix, f) for f in files], labels)


def _kaggle_labels(path: Path) -> dict[str, str]:
    """ImageId -> wnid: the first word of PredictionString ("n01751748 x0 y0 x1 y1 ...")."""
    with open(path, newline="") as f:
        return {row["ImageId"]: row["PredictionString"].split()[0] for row in csv.DictReader(f)}


def _devkit_labels(devkit: Path) -> dict[str, str]:
    """ILSVRC2012_val_<n> -> wnid: line n of the ground truth is an ILSVRC2012_ID, which meta.mat
    maps to a wnid (these ids follow the devkit's own order, not sorted wnids)."""
    import scipy.io

    synsets = scipy.io.loadmat(devkit / "data" / "meta.mat", squeeze_me=True)["synsets"]
    wnid_of_id = {
        int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets if s["num_children"] == 0
    }
    truth = (devkit / "data" / "ILSVRC2012_validation_ground_truth.txt").read_text().split()
    return {f"ILSVRC2012_val_{n:08d}": wnid_of_id[int(i)] for n, i in enumerate(truth, start=1)}


def _from_tars(root: Path) -> tuple[Split, Split, list[str]]:
    """Layout 3: torchvision.datasets.ImageNet checks the archives and unpacks them once."""
    from torchvision.datasets import ImageNet

    splits = {s: ImageNet(str(root), split=s) for s in ("train", "val")}
    classes = splits["train"].wnids
    index = {c: i for i, c in enumerate(classes)}
    out = []
    for ds in splits.values():
        paths = [os.path.relpath(p, root) for p, _ in ds.samples]
        out.append(Split.of(root, paths, [index[ds.wnids[y]] for _, y in ds.samples]))
    return out[0], out[1], classes


# ---------------------------------------------------------------- datasets


class ImageFiles(Dataset):
    """Image files through a transform. A key is an index, or (index, epoch, seed) from the
    training sampler: the augmentation's randomness comes from that triple only.

    An unreadable file (corrupt, truncated, not an image) is replaced by the next readable one,
    warned about once with its path and counted in `bad`, a shared-memory flag per file that
    every worker process sees."""

    def __init__(self, split: Split, transform: T.TrainTransform | T.EvalTransform):
        self.split, self.transform = split, transform
        self.train = isinstance(transform, T.TrainTransform)
        self.bad = torch.zeros(len(split.files), dtype=torch.bool).share_memory_()

    def __len__(self) -> int:
        return len(self.split.files)

    def __getitem__(self, key: int | tuple[int, int, int]) -> tuple[torch.Tensor, int]:
        index, epoch, seed = key if isinstance(key, tuple) else (key, 0, 0)
        error = None
        for attempt in range(MAX_BAD_IN_A_ROW):
            i = (index + attempt) % len(self)
            if self.bad[i]:
                continue
            try:
                return self.load(i, epoch, seed), int(self.split.labels[i])
            except Exception as err:  # noqa: BLE001 - any decoder error means "skip this file"
                error = err
                if not self.bad[i]:
                    self.bad[i] = True
                    warnings.warn(
                        f"skipping unreadable image {self.split.path(i)}: {err}", stacklevel=2
                    )
        raise RuntimeError(
            f"{MAX_BAD_IN_A_ROW} unreadable images in a row after {self.split.path(index)}: "
            "is data.root an image tree?"
        ) from error

    def read(self, i: int) -> bytes:
        with open(self.split.path(i), "rb") as f:
            return f.read()

    def load(self, i: int, epoch: int, seed: int) -> torch.Tensor:
        data = self.read(i)
        if self.train:
            return self.transform(data, np.random.default_rng([seed, epoch, i, _TAG_AUGMENT]))
        return self.transform(data)


class ArrayImages(Dataset):
    """In-memory uint8 images [N, C, H, W] (MNIST): no decoding, and no augmentation whatever
    data.augment says (the experiments' crop and colour settings are for photographs)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels
        self.bad = torch.zeros(0, dtype=torch.bool)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int | tuple[int, int, int]) -> tuple[torch.Tensor, int]:
        index = key[0] if isinstance(key, tuple) else key
        return self.images[index], int(self.labels[index])


def skipped_files(dataset: Dataset) -> int:
    """How many unreadable files the dataset has skipped so far (all worker processes)."""
    return int(dataset.bad.sum())


def _mnist(cfg: DictConfig) -> tuple[ArrayImages, ArrayImages, list[str]]:
    from bnrepro.mnist import load_mnist

    if cfg.in_chans != 1 or cfg.train_crop != cfg.eval_crop:
        raise ValueError("data=mnist needs data.in_chans=1 and data.train_crop == data.eval_crop")
    arrays = load_mnist(cfg.root)
    out = []
    for split in ("train", "test"):
        x = torch.from_numpy(arrays[f"x_{split}"]).unsqueeze(1).float()
        x = F.interpolate(x, size=(cfg.train_crop, cfg.train_crop), mode="bilinear", antialias=True)
        images = x.round().clamp(0, 255).to(torch.uint8)
        out.append(ArrayImages(images, torch.from_numpy(arrays[f"y_{split}"]).long()))
    return out[0], out[1], [str(d) for d in range(10)]


def build_datasets(data_cfg: DictConfig) -> tuple[Dataset, Dataset, list[str]]:
    """(train_ds, val_ds, classes) for data.name imagenet | synthetic | mnist."""
    cfg = data_cfg
    if cfg.name == "mnist":
        return _mnist(cfg)
    if OmegaConf.is_missing(cfg, "root") or cfg.root is None:
        raise ValueError("data.root is not set: data.root=/path/to/imagenet")
    if cfg.in_chans != 3 or len(cfg.mean) != 3 or len(cfg.std) != 3:
        raise ValueError(f"data={cfg.name} is RGB: set data.in_chans=3 and 3-value mean and std")
    if cfg.name == "synthetic":
        from bnrepro.synthetic import ensure_tree

        ensure_tree(cfg.root, num_classes=cfg.num_classes, **cfg.synthetic)
    train, val, classes = find_imagenet(cfg.root)
    if len(classes) != cfg.num_classes:
        raise ValueError(
            f"{cfg.root} has {len(classes)} classes but data.num_classes={cfg.num_classes}: "
            f"set data.num_classes={len(classes)}"
        )
    try:
        aug = T.Augment(**cfg.augment)
    except TypeError as err:
        keys = list(T.Augment.__dataclass_fields__)
        raise ValueError(f"data.augment: {err}; its keys are {keys}") from err
    train_ds = ImageFiles(train, T.TrainTransform(cfg.train_crop, aug))
    val_ds = ImageFiles(val, T.EvalTransform(cfg.eval_resize, cfg.eval_crop))
    return train_ds, val_ds, classes


# ---------------------------------------------------------------- sampling and loading


class EpochSampler(Sampler):
    """Keys (index, epoch, seed) of one rank's share of an epoch, from batch `start_batch` on.
    The order depends only on (seed, epoch, shuffle, shard_size), never on the worker count."""

    def __init__(
        self,
        size: int,
        *,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: str = "full",
        shard_size: int = 1024,
    ):
        if shuffle not in ("full", "shards"):
            raise ValueError(f"data.shuffle must be full or shards, got {shuffle!r}")
        self.per_rank = size // world_size
        if self.per_rank < batch_size:
            raise ValueError(
                f"{size} training images give {self.per_rank} per rank over {world_size} ranks, "
                f"fewer than one batch (data.batch_size={batch_size}): lower the batch size"
            )
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.shard_size = shuffle, shard_size
        self.epoch, self.start_batch = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return self.per_rank // self.batch_size

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Next iteration yields `epoch` from batch `start_batch` (resume) without touching the
        skipped images."""
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise ValueError(f"start_batch={start_batch} outside 0..{self.batches_per_epoch}")
        self.epoch, self.start_batch = epoch, start_batch

    def order(self, epoch: int) -> np.ndarray:
        """The whole set's order in `epoch` (before the split between ranks)."""
        rng = np.random.default_rng([self.seed, epoch, _TAG_SHUFFLE])
        if self.shuffle == "full":
            return rng.permutation(self.size)
        fixed = np.random.default_rng([self.seed, _TAG_SHARDS]).permutation(self.size)
        shards = [fixed[i : i + self.shard_size] for i in range(0, self.size, self.shard_size)]
        return np.concatenate([rng.permutation(shards[s]) for s in rng.permutation(len(shards))])

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        order = self.order(self.epoch)[: self.per_rank * self.world_size]
        mine = order[self.rank :: self.world_size][self.start_batch * self.batch_size :]
        epoch, seed = self.epoch, self.seed
        return ((int(i), epoch, seed) for i in mine)  # lazily: ImageNet has 1.28M keys

    def __len__(self) -> int:
        return self.per_rank - self.start_batch * self.batch_size


def _loader_kwargs(cfg: DictConfig) -> dict:
    workers = int(cfg.num_workers)
    return dict(
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
    )


def build_train_loader(
    data_cfg: DictConfig, train_ds: Dataset, *, seed: int, rank: int, world_size: int
) -> DataLoader:
    """Full batches of (uint8 [B, C, H, W], int64 [B]); `loader.sampler.set_epoch(e, start_batch)`
    before each epoch. len(loader) = batches left in the current epoch."""
    sampler = EpochSampler(
        len(train_ds),
        batch_size=data_cfg.batch_size,
        seed=seed,
        rank=rank,
        world_size=world_size,
        shuffle=data_cfg.shuffle,
        shard_size=data_cfg.shard_size,
    )
    if data_cfg.decode not in ("cpu", "gpu"):
        raise ValueError(f"data.decode must be cpu or gpu, got {data_cfg.decode!r}")
    if data_cfg.decode == "gpu" and isinstance(train_ds, ImageFiles):
        if torch.cuda.is_available():
            return DeviceDecodeLoader(data_cfg, train_ds, sampler, device="cuda")
        warnings.warn(
            "data.decode=gpu but CUDA is not available: decoding on the CPU", stacklevel=2
        )
    return DataLoader(
        train_ds, batch_size=data_cfg.batch_size, sampler=sampler, drop_last=True,
        **_loader_kwargs(data_cfg),
    )  # fmt: skip


def build_val_loader(
    data_cfg: DictConfig, val_ds: Dataset, *, rank: int, world_size: int
) -> DataLoader:
    """Centre crops (uint8) of this rank's every world_size-th image, in order, not padded: sum
    the correct counts over ranks for the exact accuracy."""
    indices = list(range(rank, len(val_ds), world_size))
    return DataLoader(
        val_ds, batch_size=data_cfg.batch_size, sampler=indices, **_loader_kwargs(data_cfg)
    )


@functools.lru_cache(maxsize=8)
def _mean_std(mean: tuple, std: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    m = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255
    s = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255
    return m, s


def normalize(images: torch.Tensor, data_cfg: DictConfig, *, channels_last: bool) -> torch.Tensor:
    """uint8 [B, C, H, W] -> float32 (x/255 - mean) / std, on the images' device (so the uint8
    batch is what crosses the bus: 4x fewer bytes)."""
    if images.dtype != torch.uint8:
        raise TypeError(f"normalize expects the loader's uint8 images, got {images.dtype}")
    mean, std = _mean_std(tuple(data_cfg.mean), tuple(data_cfg.std), images.device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return images.contiguous(memory_format=fmt).float().sub_(mean).div_(std)


# ---------------------------------------------------------------- decoding on the GPU


class _RawFiles(Dataset):
    """Worker side of decode=gpu: file bytes and the sample's augmentation parameters, drawn from
    the same (seed, epoch, index) stream as the CPU path, so both give the same crops."""

    def __init__(self, ds: ImageFiles):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, key: tuple[int, int, int]):
        index, epoch, seed = key
        try:
            data = self.ds.read(index)
            w, h = T.image_size(data)
        except Exception:  # noqa: BLE001 - let the CPU path skip, warn and count it
            return key, None, None, int(self.ds.split.labels[index])
        rng = np.random.default_rng([seed, epoch, index, _TAG_AUGMENT])
        params = T.sample_train(w, h, self.ds.transform.aug, rng)
        buf = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        return key, buf, params, int(self.ds.split.labels[index])


class DeviceDecodeLoader:
    """decode=gpu: workers read bytes and draw crops; torchvision.io.decode_jpeg decodes the batch
    on `device`, where crop, resize, flip and colour happen too. Files it cannot decode (PNG,
    CMYK, corrupt) go through the CPU path, which also skips and counts bad ones."""

    def __init__(self, cfg: DictConfig, ds: ImageFiles, sampler: EpochSampler, device: str):
        self.ds, self.sampler, self.device = ds, sampler, torch.device(device)
        self.size = ds.transform.size
        self.loader = DataLoader(
            _RawFiles(ds), batch_size=cfg.batch_size, sampler=sampler, drop_last=True,
            collate_fn=list, **_loader_kwargs(cfg),
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in self.loader:
            ok = [b for b in batch if b[1] is not None]
            try:
                decoded = self._decode([b[1] for b in ok]) if ok else []
            except RuntimeError:  # one bad file fails the batch call: decode one by one
                decoded = [self._decode_one(b[1]) for b in ok]
            by_key = {b[0]: d for b, d in zip(ok, decoded, strict=True)}
            images, labels = [], []
            for key, _, params, label in batch:
                img = by_key.get(key)
                if img is None:  # not a JPEG, CMYK, corrupt: the CPU path
                    img, label = self.ds[key]
                    img = img.to(self.device)
                else:
                    img = self._augment(img, params)
                images.append(img)
                labels.append(label)
            yield torch.stack(images), torch.tensor(labels, dtype=torch.int64)

    def _decode(self, buffers: list[torch.Tensor]) -> list[torch.Tensor]:
        from torchvision.io import ImageReadMode, decode_jpeg

        return decode_jpeg(buffers, mode=ImageReadMode.RGB, device=self.device)

    def _decode_one(self, buf: torch.Tensor) -> torch.Tensor | None:
        try:
            return self._decode([buf])[0]
        except RuntimeError:
            return None

    def _augment(self, img: torch.Tensor, p: T.TrainParams) -> torch.Tensor:
        x0, y0, x1, y1 = p.box
        crop = img[None, :, y0:y1, x0:x1].float()
        out = F.interpolate(crop, size=(self.size, self.size), mode="bilinear", antialias=True)
        out = out[0].round_().clamp_(0, 255).to(torch.uint8)
        if p.flip:
            out = out.flip(-1)
        return T.apply_color(out, p.color_ops)

"""Training and validation loaders: uint8 batches, coloured and normalised later on the device
(engine.Runtime.inputs).

A training batch is a datasets.TrainBatch (uint8 images [B, C, H, W], int64 labels [B], float32
colour parameters [B, 5]); `loader.sampler.set_epoch(epoch, start_image)` picks the epoch and the
resume position (global images into the epoch's order). A validation batch is (uint8 images,
labels); a validation loader gives rank r the images r, r + world, ... unpadded: sum the correct
counts over ranks for the exact accuracy.

data.decode picks who decodes image files: cpu (DataLoader workers), gpu (torchvision's batched
decode_jpeg on CUDA, training only) or dali (NVIDIA DALI, on CUDA if there is one, else its CPU
backend; training and evaluation). All three take the same crops in the same order.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset, default_collate

from bnrepro.data.datasets import ImageFiles, WholeImages, collate_train, skipped_files
from bnrepro.data.gpu_decode import DeviceDecodeLoader
from bnrepro.data.sampler import loader_kwargs, training_sampler

if TYPE_CHECKING:
    from bnrepro.data.dali import DaliLoader

# data.decode -> who decodes image files for (training, evaluation). The config schema admits only
# these keys (bnrepro/schema.py); another value is a KeyError here, never a silent CPU loader.
_DECODED_BY = {"cpu": ("cpu", "cpu"), "gpu": ("gpu", "cpu"), "dali": ("dali", "dali")}
DECODERS = tuple(_DECODED_BY)


def _decoder(data_cfg: DictConfig, ds: Dataset, *, train: bool) -> str:
    """Who decodes `ds`: data.decode's choice for image files, the CPU for in-memory arrays."""
    by = _DECODED_BY[data_cfg.decode][0 if train else 1]
    return by if isinstance(ds, ImageFiles) else "cpu"


def _dali_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def build_train_loader(
    data_cfg: DictConfig, train_ds: Dataset, *, seed: int, rank: int, world_size: int
) -> DataLoader | DeviceDecodeLoader | DaliLoader:
    """Full TrainBatches (images, labels, colour parameters); `loader.sampler.set_epoch(e,
    start_image)` before each epoch. len(loader) = batches left in the current epoch."""
    sampler = training_sampler(data_cfg, len(train_ds), seed=seed, rank=rank, world_size=world_size)
    decoder = _decoder(data_cfg, train_ds, train=True)
    if decoder == "dali":
        from bnrepro.data.dali import DaliLoader  # the optional extra: imported only when asked

        return DaliLoader(data_cfg, train_ds, sampler, device=_dali_device())
    if decoder == "gpu":
        if torch.cuda.is_available():
            return DeviceDecodeLoader(data_cfg, train_ds, sampler, device="cuda")
        warnings.warn(
            "data.decode=gpu but CUDA is not available: decoding on the CPU", stacklevel=2
        )
    return DataLoader(
        train_ds, batch_size=data_cfg.batch_size, sampler=sampler, drop_last=True,
        collate_fn=collate_train, **loader_kwargs(data_cfg),
    )  # fmt: skip


def build_val_loader(
    data_cfg: DictConfig, val_ds: Dataset, *, rank: int, world_size: int
) -> DataLoader | DaliLoader:
    """Centre crops (uint8) of this rank's every world_size-th image, in order, not padded."""
    indices = list(range(rank, len(val_ds), world_size))
    if _decoder(data_cfg, val_ds, train=False) == "dali":
        from bnrepro.data.dali import DaliLoader

        return DaliLoader(data_cfg, val_ds, indices, device=_dali_device(), drop_last=False)
    return DataLoader(
        val_ds, batch_size=data_cfg.batch_size, sampler=indices, collate_fn=_readable_batch,
        **loader_kwargs(data_cfg),
    )  # fmt: skip


def _readable_batch(batch: list) -> tuple[torch.Tensor, torch.Tensor]:
    """A val batch without its unreadable files (None: left out, warned about and counted by
    ImageFiles.try_load); empty if none was readable."""
    readable = [(image, label) for image, label in batch if image is not None]
    if not readable:
        return torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.int64)
    return default_collate(readable)


def unreadable_files(loader) -> int:
    """How many files of this loader's dataset were found unreadable so far (every worker
    process): an evaluation leaves them out and says how many."""
    return skipped_files(loader.dataset if isinstance(loader, DataLoader) else loader.ds)


def _whole_images_batch(batch: list) -> tuple[list[torch.Tensor], torch.Tensor, int]:
    """(decoded images, labels, number of unreadable files left out)."""
    good = [(image, label) for image, label in batch if image is not None]
    return [im for im, _ in good], torch.tensor([lb for _, lb in good]), len(batch) - len(good)


def whole_image_loader(
    images: WholeImages, batch_images: int, num_workers: int, device: torch.device
) -> DataLoader:
    """Batches of (whole decoded images: a list, their sizes differ; labels; unreadable files
    left out), decoded in the workers."""
    return DataLoader(
        images, batch_size=max(1, batch_images), num_workers=num_workers,
        collate_fn=_whole_images_batch, pin_memory=device.type == "cuda",
    )  # fmt: skip

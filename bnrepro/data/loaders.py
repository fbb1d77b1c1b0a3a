"""Training and validation loaders: uint8 batches, normalised later on the device (engine.Runtime).

A training batch is (uint8 [B, C, H, W], int64 [B]); `loader.sampler.set_epoch(epoch,
start_image)` picks the epoch and the resume position (global images into the epoch's order). A validation loader gives rank r the images
r, r + world, ... unpadded: sum the correct counts over ranks for the exact accuracy.

data.decode picks who decodes image files: cpu (DataLoader workers), gpu (torchvision's batched
decode_jpeg on CUDA, training only) or dali (NVIDIA DALI, on CUDA if there is one, else its CPU
backend; training and evaluation). All three take the same crops in the same order.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from bnrepro.data.datasets import ImageFiles
from bnrepro.data.gpu_decode import DeviceDecodeLoader
from bnrepro.data.sampler import EpochSampler, loader_kwargs

if TYPE_CHECKING:
    from bnrepro.data.dali import DaliLoader

DECODERS = ("cpu", "gpu", "dali")


def _dali_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def build_train_loader(
    data_cfg: DictConfig, train_ds: Dataset, *, seed: int, rank: int, world_size: int
) -> DataLoader | DeviceDecodeLoader | DaliLoader:
    """Full batches of (uint8 [B, C, H, W], int64 [B]); `loader.sampler.set_epoch(e, start_image)`
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
    if data_cfg.decode not in DECODERS:
        raise ValueError(f"data.decode must be cpu, gpu or dali, got {data_cfg.decode!r}")
    if data_cfg.decode == "dali" and isinstance(train_ds, ImageFiles):
        from bnrepro.data.dali import DaliLoader  # the optional extra: imported only when asked

        return DaliLoader(data_cfg, train_ds, sampler, device=_dali_device())
    if data_cfg.decode == "gpu" and isinstance(train_ds, ImageFiles):
        if torch.cuda.is_available():
            return DeviceDecodeLoader(data_cfg, train_ds, sampler, device="cuda")
        warnings.warn(
            "data.decode=gpu but CUDA is not available: decoding on the CPU", stacklevel=2
        )
    return DataLoader(
        train_ds, batch_size=data_cfg.batch_size, sampler=sampler, drop_last=True,
        **loader_kwargs(data_cfg),
    )  # fmt: skip


def build_val_loader(
    data_cfg: DictConfig, val_ds: Dataset, *, rank: int, world_size: int
) -> DataLoader | DaliLoader:
    """Centre crops (uint8) of this rank's every world_size-th image, in order, not padded."""
    indices = list(range(rank, len(val_ds), world_size))
    if data_cfg.decode == "dali" and isinstance(val_ds, ImageFiles):
        from bnrepro.data.dali import DaliLoader

        return DaliLoader(data_cfg, val_ds, indices, device=_dali_device(), drop_last=False)
    return DataLoader(
        val_ds, batch_size=data_cfg.batch_size, sampler=indices, **loader_kwargs(data_cfg)
    )

"""Training and validation loaders: uint8 batches, normalised later on the device (engine.Runtime).

A training batch is (uint8 [B, C, H, W], int64 [B]); `loader.sampler.set_epoch(epoch,
start_image)` picks the epoch and the resume position (global images into the epoch's order). A validation loader gives rank r the images
r, r + world, ... unpadded: sum the correct counts over ranks for the exact accuracy.
"""

from __future__ import annotations

import warnings

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from bnrepro.data.datasets import ImageFiles
from bnrepro.data.gpu_decode import DeviceDecodeLoader
from bnrepro.data.sampler import EpochSampler, loader_kwargs


def build_train_loader(
    data_cfg: DictConfig, train_ds: Dataset, *, seed: int, rank: int, world_size: int
) -> DataLoader | DeviceDecodeLoader:
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
        **loader_kwargs(data_cfg),
    )  # fmt: skip


def build_val_loader(
    data_cfg: DictConfig, val_ds: Dataset, *, rank: int, world_size: int
) -> DataLoader:
    """Centre crops (uint8) of this rank's every world_size-th image, in order, not padded."""
    indices = list(range(rank, len(val_ds), world_size))
    return DataLoader(
        val_ds, batch_size=data_cfg.batch_size, sampler=indices, **loader_kwargs(data_cfg)
    )

"""The training order and the DataLoader settings every loader shares.

Training order (section 4.2.1 "shuffle training examples more thoroughly"): data.shuffle=full
draws a new permutation of the whole set every epoch; data.shuffle=shards [ours] emulates a less
thorough pipeline: one fixed random order cut into shards of data.shard_size, each epoch visiting
the shards in a new order and shuffling only within them, so the same images keep sharing
batches. Under DDP each rank takes every world_size-th image of that order (DistributedSampler
semantics, remainder dropped so that every rank has the same number of batches).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import Sampler

from bnrepro.data.datasets import TAG_SHARDS, TAG_SHUFFLE


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
        rng = np.random.default_rng([self.seed, epoch, TAG_SHUFFLE])
        if self.shuffle == "full":
            return rng.permutation(self.size)
        fixed = np.random.default_rng([self.seed, TAG_SHARDS]).permutation(self.size)
        shards = [fixed[i : i + self.shard_size] for i in range(0, self.size, self.shard_size)]
        return np.concatenate([rng.permutation(shards[s]) for s in rng.permutation(len(shards))])

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        order = self.order(self.epoch)[: self.per_rank * self.world_size]
        mine = order[self.rank :: self.world_size][self.start_batch * self.batch_size :]
        epoch, seed = self.epoch, self.seed
        return ((int(i), epoch, seed) for i in mine)  # lazily: ImageNet has 1.28M keys

    def __len__(self) -> int:
        return self.per_rank - self.start_batch * self.batch_size


def loader_kwargs(data_cfg: DictConfig) -> dict:
    """DataLoader settings shared by every loader: workers, pinned memory on GPU machines."""
    workers = int(data_cfg.num_workers)
    return dict(
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
    )

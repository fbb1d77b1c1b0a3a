"""The training order and the DataLoader settings every loader shares.

Each epoch has one global order of the whole training set, a function of (seed, epoch, shuffle,
shard_size) only: never of the number of ranks, the batch size or the worker count.
- data.shuffle=shards [ours]: the less thorough pipeline of Inception and BN-Baseline. One fixed
  random order, decided once from the seed, cut into shards of data.shard_size; each epoch visits
  the full shards in a new random order, the order inside a shard never changes, and the partial
  shard (size % shard_size images) comes last. With data.batch_size dividing data.shard_size,
  every batch is then the same fixed group of images in every epoch, on any number of ranks: the
  same examples "always appearing in a mini-batch together".
- data.shuffle=within_shard: the paper's section 4.2.1 change for BN-x5 and later ("We enabled
  within-shard shuffling of the training data, which prevents the same examples from always
  appearing in a mini-batch together"; docs/paper.md section 8). The same fixed shards, visited
  in a new order each epoch as under shards, and each shard's own order drawn anew every epoch:
  an image stays in its shard, but the images it shares a batch with change from epoch to epoch.
- data.shuffle=full [ours]: a new permutation of the whole set every epoch (more thorough than
  the paper's change: a shard no longer exists).

The order is consumed in global micro-batches of world_size x batch_size consecutive positions;
rank r takes positions [r x batch_size, (r + 1) x batch_size) of each. After k micro-batches the
images used so far in the epoch are exactly the first k x world_size x batch_size of its order,
whatever the world size, so the data position is one global number (`images_in_epoch`) and a run
may resume on another number of ranks or another batch size without skipping or repeating an
image: under within_shard too, since an epoch's order (each shard's own included) is drawn from
(seed, epoch) alone. Only shards' fixed groups ask more: a position that is a multiple of
data.batch_size. The tail of an epoch shorter than one global micro-batch is dropped (every rank
gets the same number of batches).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import Sampler

from bnrepro.data.datasets import TAG_SHARDS, TAG_SHUFFLE
from bnrepro.errors import ConfigError, UserError


class DataPositionError(UserError):
    """A saved data position that this run's batches cannot continue exactly."""


class EpochSampler(Sampler):
    """Keys (index, epoch, seed) of one rank's share of an epoch, from global image `start` on."""

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
        if batch_size < 1:
            raise ConfigError(f"data.batch_size must be >= 1, got {batch_size}")
        if shard_size < 1:
            raise ConfigError(f"data.shard_size must be >= 1, got {shard_size}")
        if world_size < 1 or not 0 <= rank < world_size:  # the launcher's (torchrun, srun)
            raise ConfigError(
                f"rank {rank} of world size {world_size}: WORLD_SIZE must be >= 1 and "
                "0 <= RANK < WORLD_SIZE"
            )
        # data.shuffle is checked by the config schema (bnrepro/schema.py): another value is a
        # KeyError here, never silently one of the three.
        self.by_shards, self.fixed_groups = {
            "full": (False, False), "within_shard": (True, False), "shards": (True, True)
        }[shuffle]  # fmt: skip
        if size < batch_size * world_size:
            raise ConfigError(
                f"{size} training images give {size // world_size} per rank over {world_size} "
                f"ranks, fewer than one batch (data.batch_size={batch_size}): lower the batch size"
            )
        if self.fixed_groups and shard_size % batch_size:
            raise ConfigError(
                f"data.shuffle=shards keeps each batch a fixed group of one shard, so "
                f"data.shard_size={shard_size} must be a multiple of data.batch_size={batch_size}: "
                f"set data.shard_size={-(-shard_size // batch_size) * batch_size}"
            )
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.shard_size = shuffle, shard_size
        self.images_per_batch = batch_size * world_size  # one global micro-batch
        self.epoch, self.start = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        """Full batches per rank in an epoch started at image 0."""
        return self.size // self.images_per_batch

    def set_epoch(self, epoch: int, start_image: int = 0) -> None:
        """Next iteration yields `epoch` from global image `start_image` of its order (resume),
        without touching the images before it. Refuses a position whose batches would not be
        the fixed groups of data.shuffle=shards (a resume after changing data.batch_size)."""
        if not 0 <= start_image <= self.size:
            raise DataPositionError(
                f"the checkpoint stopped {start_image} images into epoch {epoch}, past this "
                f"training set's {self.size} images: resume on the data it was trained on"
            )
        if self.fixed_groups and start_image % self.batch_size:
            raise DataPositionError(
                f"the checkpoint stopped {start_image} images into epoch {epoch}, not a multiple "
                f"of data.batch_size={self.batch_size}: under data.shuffle=shards the rest of the "
                "epoch would not be the fixed batch groups. Resume with the checkpoint's "
                "data.batch_size (or one that divides that number), or start a new run"
            )
        self.epoch, self.start = epoch, start_image

    def order(self, epoch: int) -> np.ndarray:
        """The whole set's order in `epoch` (before the split between ranks)."""
        rng = np.random.default_rng([self.seed, epoch, TAG_SHUFFLE])
        if not self.by_shards:
            return rng.permutation(self.size)
        fixed = np.random.default_rng([self.seed, TAG_SHARDS]).permutation(self.size)
        full_shards = self.size // self.shard_size
        shards = fixed[: full_shards * self.shard_size].reshape(full_shards, self.shard_size)
        partial = fixed[full_shards * self.shard_size :]  # last: keeps every full shard aligned
        shards = shards[rng.permutation(full_shards)]
        if not self.fixed_groups:  # within_shard: each shard's own order, new every epoch
            shards, partial = rng.permuted(shards, axis=1), rng.permutation(partial)
        return np.concatenate([shards.ravel(), partial])

    def _batches_left(self) -> int:
        return (self.size - self.start) // self.images_per_batch

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        order = self.order(self.epoch)
        first = self.start + self.rank * self.batch_size
        starts = range(first, first + self._batches_left() * self.images_per_batch,
                       self.images_per_batch)  # fmt: skip
        epoch, seed = self.epoch, self.seed
        return (  # lazily: ImageNet has 1.28M keys
            (int(i), epoch, seed) for s in starts for i in order[s : s + self.batch_size]
        )

    def __len__(self) -> int:
        return self._batches_left() * self.batch_size


def training_sampler(
    data_cfg: DictConfig, size: int, *, seed: int, rank: int, world_size: int
) -> EpochSampler:
    """The training order of `size` images under data_cfg (ConfigError for settings it cannot
    follow: fewer images than one batch, shards that batches do not divide)."""
    return EpochSampler(
        size, batch_size=data_cfg.batch_size, seed=seed, rank=rank, world_size=world_size,
        shuffle=data_cfg.shuffle, shard_size=data_cfg.shard_size,
    )  # fmt: skip


def loader_kwargs(data_cfg: DictConfig) -> dict:
    """DataLoader settings shared by every loader: workers, pinned memory on GPU machines."""
    workers = int(data_cfg.num_workers)
    return dict(
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
    )

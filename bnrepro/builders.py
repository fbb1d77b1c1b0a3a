"""What a run is built from, by config: the data, the network, the optimizer, the module a step
calls (SyncBN, DDP, compile), the seeds. How its tensors then run is engine.py.

    data = build_data(cfg, rank=0, world_size=1)       # datasets, loaders, class list
    model = build_model(cfg, data.classes)              # timm's bn_inception from cfg.model
    optimizer = build_optimizer(model, cfg.optim, lr)   # SGD, L2 on weights only

bnrepro-train, bnrepro-ensemble, bnrepro-bn-stats, bnrepro-plan and the benchmarks build from
here; nothing here imports them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import timm
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

import bnrepro  # noqa: F401  (registers bn_inception with timm)
from bnrepro import data as datasets
from bnrepro import distributed
from bnrepro.config import model_kwargs
from bnrepro.engine import Runtime
from bnrepro.errors import DataError


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Data:
    classes: list[str]
    train_ds: torch.utils.data.Dataset
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    identity: datasets.DataIdentity  # file counts and fingerprints (checkpoints keep them)


def build_data(
    cfg: DictConfig,
    *,
    rank: int,
    world_size: int,
    local_rank: int = 0,
    identity: datasets.DataIdentity | None = None,
) -> Data:
    """cfg.data's datasets and this rank's loaders (the training order seeded by cfg.seed); the
    file listing made once, on rank 0, and shared (data.build_datasets), or `identity`'s: what
    the run checked at start-up (data.identify), which the data must still be."""
    train_ds, val_ds, classes = datasets.build_datasets(
        cfg.data, identity, rank=rank, local_rank=local_rank, world_size=world_size
    )
    return Data(
        classes=list(classes),
        train_ds=train_ds,
        train_loader=datasets.build_train_loader(
            cfg.data, train_ds, seed=cfg.seed, rank=rank, world_size=world_size
        ),
        val_loader=datasets.build_val_loader(cfg.data, val_ds, rank=rank, world_size=world_size),
        identity=identity or datasets.identity_of(train_ds, val_ds, classes),
    )


def check_same_data(identity: datasets.DataIdentity, d: distributed.Dist) -> None:
    """DataError on every rank when the ranks' data differ (class list, file counts or
    fingerprints): an incomplete node-local copy must neither train nor evaluate with the
    others."""
    mine = {"classes": list(identity.classes), **identity.record(), "sample": identity.sample}
    ranks = distributed.gather(d, mine)
    for rank, other in enumerate(ranks[1:], start=1):
        if other == ranks[0]:
            continue
        words = ("on rank 0", f"on rank {rank}")
        if other["classes"] != ranks[0]["classes"]:
            counts = [len(ranks[0]["classes"]), len(other["classes"])]
            how = [f"{counts[0]} classes {words[0]}, {counts[1]} {words[1]}"]
        else:  # ImageNet, listed by rank 0 alone: this rank's look at the same files differs
            how = datasets.data_changes(ranks[0], other, words) or [
                "its class folders, or files rank 0 listed, missing or of other sizes there"
            ]
        raise DataError(
            f"rank {rank} sees other data than rank 0 under data.root ({'; '.join(how)}): every "
            "rank must read the same files; complete that host's copy, or point data.root at "
            "one every host reads"
        )


def arch_of(cfg: DictConfig, classes: list[str]) -> dict:
    """What rebuilds the network: timm name + keyword arguments (stored in checkpoints)."""
    kwargs = model_kwargs(cfg.model, len(classes), cfg.data.in_chans, cfg.data.train_crop)
    return {"name": cfg.model.name, "kwargs": OmegaConf.to_container(OmegaConf.create(kwargs))}


def build_model(cfg: DictConfig, classes: list[str]) -> nn.Module:
    arch = arch_of(cfg, classes)
    return timm.create_model(arch["name"], **arch["kwargs"])


def build_optimizer(model: nn.Module, optim_cfg: DictConfig, lr: float) -> torch.optim.SGD:
    # optim.decay_bn_and_bias=false [ours]: L2 on conv/linear weights only (ndim > 1), as
    # GoogLeNet's Caffe model (biases: decay_mult 0) and TF-slim; not on biases or BN's gamma/beta.
    everything = optim_cfg.decay_bn_and_bias
    decay = [p for p in model.parameters() if p.ndim > 1 or everything]
    no_decay = [p for p in model.parameters() if p.ndim <= 1 and not everything]
    groups = [
        {"params": decay, "weight_decay": optim_cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.SGD(groups, lr=lr, momentum=optim_cfg.momentum, nesterov=optim_cfg.nesterov)


def wrap_model(
    model: nn.Module, cfg: DictConfig, dist: distributed.Dist, runtime: Runtime
) -> nn.Module:
    """The module the step calls: SyncBN (model.sync_bn), DDP, torch.compile, as configured."""
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    if dist.enabled:
        if cfg.model.sync_bn:  # changes the science: the paper normalises per replica (4.2)
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ids = [dist.device.index] if dist.device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    return torch.compile(model) if runtime.compile else model

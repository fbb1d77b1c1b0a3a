"""Algorithm 2 (paper section 3.1): replace BN's moving averages by population statistics.

For every BN layer, E[x] = mean of the mini-batch means and Var[x] = m/(m-1) x mean of the
mini-batch variances, over N training mini-batches, in training mode (each batch normalised by its
own statistics, as during training), without updating any weight. PyTorch's BN with momentum=None
accumulates exactly these cumulative averages (of the unbiased batch variance).

    bnrepro-bn-stats outputs/bn_x30_seed0/checkpoints/best.pt --batches 100 --out popstats.pt
    bnrepro-bn-stats CKPT data.root=/datasets/imagenet data.batch_size=64   # data overrides
    bnrepro-bn-stats CKPT runtime.device=cpu

Training runs it before the final evaluation (val_popstats/*, beside the moving averages' val/*):
trainer.pop_stats_batches=auto (the default: 100 batches, at most an epoch, where there is BN; the
number and why: config.POP_STATS_BATCHES) or N.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Iterator
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from bnrepro import builders, checkpoint, distributed, engine
from bnrepro.config import CONFIG_DIR, POP_STATS_BATCHES
from bnrepro.errors import ConfigError
from bnrepro.schema import BnStatsSchema, check
from bnrepro.stats import fraction_interval


@torch.no_grad()
def recompute_bn_stats(
    model: nn.Module, batches: Iterator[torch.Tensor], num_batches: int
) -> nn.Module:
    """Algorithm 2 in place on `model` (pass a copy to keep the original); returns it in eval mode.

    batches yields model-ready (normalised, on-device) inputs; under DDP pass each rank's own and
    average the result with average_bn_stats.
    """
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    if not bns:
        raise ConfigError("the model has no BatchNorm layer: Algorithm 2 applies to BN networks")
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches seen (Algorithm 2, step 10)
    model.train()
    seen = 0
    for x in batches:
        if seen == num_batches:
            break
        model(x)
        seen += 1
    if seen < num_batches:
        raise ConfigError(f"asked for {num_batches} batches of BN statistics, the data gave {seen}")
    for m, momentum in zip(bns, momenta, strict=True):
        m.momentum = momentum
    return model.eval()


def average_bn_stats(model: nn.Module, all_sum) -> None:
    """Average the population statistics over DDP ranks (each saw the same number of batches).
    all_sum(tensor) sums a tensor over ranks in place (distributed.all_sum)."""
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    stats = torch.cat([torch.cat([m.running_mean, m.running_var]) for m in bns])
    world = all_sum(torch.ones(1, device=stats.device)).item()
    stats = all_sum(stats) / world
    for m in bns:
        n = m.running_mean.numel()
        m.running_mean.copy_(stats[:n])
        m.running_var.copy_(stats[n : 2 * n])
        stats = stats[2 * n :]


def population_model(
    model: nn.Module,
    train_loader: torch.utils.data.DataLoader,
    runtime: engine.Runtime,
    num_batches: int,
    *,
    dist: distributed.Dist | None = None,
) -> nn.Module:
    """A copy of `model` (which keeps its moving averages) with Algorithm 2's statistics over
    `num_batches` training batches of this rank, averaged over ranks; in eval mode."""
    with torch.random.fork_rng(devices=[]):  # must not shift the training randomness
        inputs = engine.training_inputs(train_loader, runtime)
        population = recompute_bn_stats(copy.deepcopy(model), inputs, num_batches)
    if dist is not None and dist.enabled:
        average_bn_stats(population, lambda x: distributed.all_sum(x, dist))
    return population


def population_eval(
    model: nn.Module,
    data: builders.Data,
    runtime: engine.Runtime,
    num_batches: int,
    *,
    max_images: int | None = None,
    dist: distributed.Dist | None = None,
) -> dict:
    """The val metrics of `population_model(model, ...)`, keyed val_popstats/*."""
    population = population_model(model, data.train_loader, runtime, num_batches, dist=dist)
    metrics = engine.evaluate(
        population, data.val_loader, runtime, max_images=max_images, dist=dist
    )
    return {k.replace("val/", "val_popstats/"): v for k, v in metrics.items()}


# Where the data is and how it is read: the command's. The rest of a checkpoint's data config
# (augmentation, batch size, shuffling) is how its training batches were made.
DATA_LOCATION = ("root", "num_workers", "decode", "synthetic")


def training_pipeline(checkpoint_config: dict, data: DictConfig) -> DictConfig:
    """The data config a checkpoint was trained with (colour strength, batch size, ...: the
    batches Algorithm 2 must average over), reading the images where `data` says they are; `data`
    itself for a checkpoint without its config."""
    own = checkpoint_config.get("data")
    if not own:
        return data
    return OmegaConf.merge(own, {k: data[k] for k in DATA_LOCATION if k in data})


def checkpoint_config(loaded: checkpoint.Loaded, overrides: list[str]) -> DictConfig:
    """The checkpoint's own config (its data pipeline, its seed) on this machine's runtime
    defaults, with the command line's `overrides` of seed, data.* and runtime.*, checked."""
    keys = [o.split("=", 1)[0].lstrip("+") for o in overrides]
    outside = [k for k in keys if k.split(".")[0] not in ("seed", "data", "runtime")]
    if outside:
        raise ConfigError(f"bnrepro-bn-stats takes overrides of seed, data.* and runtime.* only, "
                          f"got {', '.join(outside)}")  # fmt: skip
    runtime = OmegaConf.load(Path(CONFIG_DIR, "runtime", "default.yaml"))
    saved = {k: loaded.config[k] for k in ("seed", "data") if k in loaded.config}
    cfg = OmegaConf.merge({"runtime": runtime, "seed": 0}, saved)
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    except ValueError as e:  # an override without "="
        raise ConfigError(f"overrides are key=value: {e}") from e
    check(cfg, BnStatsSchema)
    return cfg


def _interval(accuracy: float, metrics: dict) -> str:
    low, high = fraction_interval(accuracy, metrics["val/images"])
    return f"95% CI {low:.4f}-{high:.4f}"


def main(argv: list[str] | None = None) -> None:
    """bnrepro-bn-stats: Algorithm 2 on a checkpoint; prints val top-1/top-5 before and after,
    each with its 95% Wilson interval."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a bnrepro checkpoint (ckpt_*.pt or best.pt)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. data.root=/x")
    parser.add_argument("--batches", type=int, default=POP_STATS_BATCHES,
                        help="training batches to average")  # fmt: skip
    parser.add_argument("--out", help="write a checkpoint with the population statistics here")
    args = parser.parse_args(argv)
    if args.batches < 1:
        raise ConfigError(f"--batches must be >= 1, got {args.batches}")
    if args.out and Path(args.out).exists():  # checked before the work, never overwritten
        raise ConfigError(f"--out {args.out} exists: give a new file name")

    loaded = checkpoint.load_model(args.checkpoint)
    cfg = checkpoint_config(loaded, args.overrides)
    device = distributed.resolve_device(cfg.runtime.device, key="runtime.device")
    runtime = engine.build_runtime(cfg.runtime, cfg.data, device)
    data = builders.build_data(cfg, rank=0, world_size=1)
    if loaded.classes != data.classes:
        raise checkpoint.CheckpointError(
            f"checkpoint {args.checkpoint} was trained on {len(loaded.classes)} classes (first "
            f"{loaded.classes[:3]}), the data has {len(data.classes)} (first {data.classes[:3]}): "
            "point data.root at the data it was trained on"
        )
    model = loaded.model.to(device)
    before = engine.evaluate(model, data.val_loader, runtime)
    population = population_model(model, data.train_loader, runtime, args.batches)
    after = engine.evaluate(population, data.val_loader, runtime)
    for name, metrics in (("moving averages: ", before), ("population stats:", after)):
        scores = [f"{k} {metrics[f'val/{k}']:.4f} ({_interval(metrics[f'val/{k}'], metrics)})"
                  for k in ("top1", "top5")]  # fmt: skip
        print(f"{name} {'  '.join(scores)}  of {metrics['val/images']} val images")
    if args.out:
        ckpt = checkpoint.load(args.checkpoint)
        ckpt["model"] = {k: v.cpu() for k, v in population.state_dict().items()}
        ckpt["metrics"] = {**ckpt.get("metrics", {}), "val_popstats/top1": after["val/top1"]}
        checkpoint.save(Path(args.out), ckpt)
        print(f"checkpoint with population statistics: {args.out}")

"""bnrepro-train: one training loop for every variant of the paper (section 4.2), CPU to multi-node.

    bnrepro-train                                   # bn_x30 on the synthetic data, CPU, ~1-2 min
    bnrepro-train experiment=bn_x5 optim.lr=0.01 data.batch_size=64
    bnrepro-train -m experiment=inception,bn_baseline,bn_x5,bn_x30,bn_x5_sigmoid
    bnrepro-train experiment=bn_x30 data=imagenet data.root=/datasets/imagenet          # one GPU
    torchrun --nproc_per_node=8 -m bnrepro.train experiment=bn_x30 data=imagenet ...    # one node
    srun --ntasks-per-node=8 bnrepro-train experiment=bn_x30 data=imagenet ...          # SLURM

Everything is counted in images (paper steps = images / 32). Running the same command again in the
same run folder resumes from its newest valid checkpoint; trainer.resume=PATH resumes from a file.
On trainer.preempt_signal (SLURM's warning, USR2) the run checkpoints, requeues itself under SLURM
and exits 0; on SIGTERM (scancel, a time-limit kill) it checkpoints and exits 0 without requeueing.
"""

from __future__ import annotations

import contextlib
import copy
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import numpy as np
import timm
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm import tqdm

import bnrepro  # noqa: F401  (registers bn_inception with timm)
from bnrepro import checkpoint, data, distributed, schedule
from bnrepro.bn_stats import average_bn_stats, recompute_bn_stats
from bnrepro.checkpoint import Checkpointer, CheckpointError
from bnrepro.config import CONFIG_DIR, effective_lr, model_kwargs
from bnrepro.metrics import topk_correct
from bnrepro.monitor import Monitor
from bnrepro.tracking import PAPER_BATCH, Tracker


@dataclass
class Data:
    classes: list[str]
    train_ds: torch.utils.data.Dataset
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader


@dataclass(frozen=True)
class Exec:
    """How tensors run: device, autocast dtype (None = fp32), memory format."""

    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool

    def autocast(self) -> contextlib.AbstractContextManager:
        enabled = self.amp_dtype is not None
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=enabled)

    def inputs(self, images: torch.Tensor, data_cfg: DictConfig) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)  # uint8 until here: 4x less to copy
        return data.normalize(images, data_cfg, channels_last=self.channels_last)


@dataclass
class Progress:
    """Where the run is; saved in every checkpoint."""

    images_seen: int = 0
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best: dict = field(default_factory=lambda: {"val/top1": 0.0, "val/top5": 0.0})
    steps_to_target: float | None = None  # paper steps at the first val/top1 >= target


def check_config(cfg: DictConfig) -> None:
    """Start-up checks whose messages name the fix (Hydra has already refused unknown keys)."""
    t = cfg.trainer
    for key in ("max_images", "eval_every_images", "ckpt_every_images", "log_every_images"):
        value = t[key]  # 1e6 is fine: a whole number of images
        if not isinstance(value, int | float) or value <= 0 or value != int(value):
            raise ValueError(f"trainer.{key} must be a positive number of images, got {value!r}")
    if not isinstance(t.grad_accum, int) or t.grad_accum < 1:
        raise ValueError(f"trainer.grad_accum must be an integer >= 1, got {t.grad_accum!r}")
    if t.pop_stats_batches and not (cfg.model.batch_norm or cfg.model.head_bn):
        raise ValueError("trainer.pop_stats_batches needs a BN network: set model.batch_norm=true")
    if not hasattr(signal, f"SIG{t.preempt_signal.removeprefix('SIG')}"):
        raise ValueError(f"trainer.preempt_signal={t.preempt_signal!r} is no signal (e.g. USR2)")


def build_data(cfg: DictConfig, *, rank: int, world_size: int) -> Data:
    train_ds, val_ds, classes = data.build_datasets(cfg.data)
    return Data(
        classes=list(classes),
        train_ds=train_ds,
        train_loader=data.build_train_loader(
            cfg.data, train_ds, seed=cfg.seed, rank=rank, world_size=world_size
        ),
        val_loader=data.build_val_loader(cfg.data, val_ds, rank=rank, world_size=world_size),
    )


def arch_of(cfg: DictConfig, classes: list[str]) -> dict:
    """What rebuilds the network: timm name + keyword arguments (stored in checkpoints)."""
    kwargs = model_kwargs(cfg.model, len(classes), cfg.data.in_chans)
    return {"name": cfg.model.name, "kwargs": OmegaConf.to_container(OmegaConf.create(kwargs))}


def build_model(cfg: DictConfig, classes: list[str]) -> nn.Module:
    arch = arch_of(cfg, classes)
    return timm.create_model(arch["name"], **arch["kwargs"])


def build_exec(trainer_cfg: DictConfig, device: torch.device) -> Exec:
    cuda = device.type == "cuda"
    amp = trainer_cfg.amp if trainer_cfg.amp != "auto" else ("bf16" if cuda else "none")
    dtypes = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if amp not in dtypes or (amp == "fp16" and not cuda):
        raise ValueError(f"trainer.amp={amp!r}: use auto, none, bf16 (CPU or GPU) or fp16 (GPU)")
    if cuda and trainer_cfg.tf32:  # TF32 matmul/conv on Ampere+: ~fp32 accuracy, much faster
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    channels_last = cuda if trainer_cfg.channels_last == "auto" else bool(trainer_cfg.channels_last)
    return Exec(device, dtypes[amp], channels_last)


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


def wrap_model(model: nn.Module, cfg: DictConfig, d: distributed.Dist, ex: Exec) -> nn.Module:
    """The module the step calls: SyncBN (model.sync_bn), DDP, torch.compile, as configured."""
    if ex.channels_last:
        model.to(memory_format=torch.channels_last)
    if d.enabled:
        if cfg.model.sync_bn:  # changes the science: the paper normalises per replica (4.2)
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ids = [d.device.index] if d.device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    return torch.compile(model) if cfg.trainer.compile else model


def find_checkpoint(cfg: DictConfig, ckpts: Checkpointer, arch: dict, classes: list) -> dict | None:
    """trainer.resume, else the run folder's newest valid checkpoint, else None; refuses (before
    anything is written) a checkpoint of another model/class list or a folder of another run."""
    if cfg.trainer.resume:
        path, ckpt = cfg.trainer.resume, checkpoint.load(cfg.trainer.resume)
    elif found := ckpts.newest_valid():
        path, ckpt = found
        diff = checkpoint.config_diff(ckpt["config"], OmegaConf.to_container(cfg, resolve=True))
        if diff:
            raise CheckpointError(
                f"run folder {ckpts.dir.parent} holds a run with another config (differs in: "
                f"{', '.join(diff)}). Use another out_dir or seed for a new run, or "
                f"trainer.resume={path} to continue that checkpoint with this config."
            )
    else:
        return None
    checkpoint.check_compatible(ckpt, arch, classes, path)
    return ckpt


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def batches(loader: torch.utils.data.DataLoader, epoch: int, start_batch: int):
    """Endless (epoch, batches done in that epoch, images, labels), from a saved data position."""
    while True:
        loader.sampler.set_epoch(epoch, start_batch=start_batch)
        # iter() draws worker seeds from the global RNG: fork it, so that the training randomness
        # (dropout) does not depend on where a run was resumed.
        with torch.random.fork_rng(devices=[]):
            iterator = iter(loader)
        for position, (images, labels) in enumerate(iterator, start=start_batch + 1):
            yield epoch, position, images, labels
        epoch, start_batch = epoch + 1, 0


def model_inputs(loader: torch.utils.data.DataLoader, cfg: DictConfig, ex: Exec):
    """Normalised training inputs, for Algorithm 2 (bn_stats)."""
    for _, _, images, _ in batches(loader, 0, 0):
        yield ex.inputs(images, cfg.data)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    cfg: DictConfig,
    ex: Exec,
    d: distributed.Dist | None = None,
) -> dict:
    """Single-centre-crop val loss, top-1, top-5 (fractions), summed over ranks."""
    if d is not None:
        distributed.broadcast_buffers(model, d)  # every rank evaluates rank 0's model
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=ex.device)  # loss, top1, top5, count
    limit = cfg.trainer.eval_max_images
    with torch.random.fork_rng(devices=[]):  # evaluating must not shift the training randomness
        for images, labels in loader:
            labels = labels.to(ex.device, non_blocking=True)
            with ex.autocast():
                logits = model(ex.inputs(images, cfg.data)).float()
            correct = topk_correct(logits, labels, ks=(1, 5))
            loss = F.cross_entropy(logits, labels, reduction="sum")
            totals[0] += loss
            totals[1] += correct[1].sum()
            totals[2] += correct[5].sum()
            totals[3] += len(labels)
            if limit and totals[3] * (d.world_size if d else 1) >= limit:
                break
    if d is not None:
        distributed.all_sum(totals, d)
    model.train(was_training)
    loss, top1, top5, n = totals.tolist()
    return {"val/loss": loss / n, "val/top1": top1 / n, "val/top5": top5 / n}


class Preemption:
    """Sets `requested` on SIGTERM or trainer.preempt_signal; the loop checks it every step.

    Only the warning signal asks for a requeue: SIGTERM comes from `scancel`, a time-limit kill or
    a cluster that requeues by itself, so the run checkpoints and stops without requeueing.
    """

    def __init__(self, signal_name: str) -> None:
        self.warning = getattr(signal, f"SIG{signal_name.removeprefix('SIG')}")
        self.signals = {signal.SIGTERM, self.warning}
        self.requested = self.requeue = False

    def __enter__(self) -> Preemption:
        self.previous = {s: signal.signal(s, self._handle) for s in self.signals}
        return self

    def _handle(self, signum: int, frame: object) -> None:
        self.requested = True
        self.requeue = self.requeue or signum == self.warning

    def __exit__(self, *exc: object) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def train_step(
    model: nn.Module,
    data_iter,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    cfg: DictConfig,
    ex: Exec,
    stats: torch.Tensor,
) -> tuple[int, int]:
    """One optimizer step over trainer.grad_accum micro-batches; adds loss/top1/count to `stats`
    (no host sync here); returns the data position after it (epoch, batch_in_epoch)."""
    accum = cfg.trainer.grad_accum
    optimizer.zero_grad(set_to_none=True)
    for micro in range(accum):
        epoch, position, images, labels = next(data_iter)
        labels = labels.to(ex.device, non_blocking=True)
        x = ex.inputs(images, cfg.data)
        # Under DDP, all-reduce gradients only on the last micro-batch.
        no_sync = micro < accum - 1 and hasattr(model, "no_sync")
        with model.no_sync() if no_sync else contextlib.nullcontext(), ex.autocast():
            logits = model(x)
            loss = F.cross_entropy(logits.float(), labels)
        scaler.scale(loss / accum).backward()
        with torch.no_grad():
            stats[0] += loss.detach() * len(labels)
            stats[1] += (logits.argmax(1) == labels).sum()
            stats[2] += len(labels)
    scaler.step(optimizer)
    scaler.update()
    return epoch, position


def train(cfg: DictConfig, run_dir: str | Path | None = None) -> dict:
    """Train as configured; returns the run summary (also written to <run_dir>/summary.json).
    run_dir defaults to <out_dir>/<run_name> (Hydra's run folder; main() passes Hydra's own)."""
    check_config(cfg)
    with Preemption(cfg.trainer.preempt_signal) as preemption:  # from the start: no signal lost
        return run(cfg, Path(run_dir or Path(cfg.out_dir) / cfg.run_name), preemption)


def run(cfg: DictConfig, run_dir: Path, preemption: Preemption) -> dict:
    """train()'s body: build, resume, loop, finish."""
    d = distributed.setup(cfg.trainer.device)
    ex = build_exec(cfg.trainer, d.device)
    seed_everything(cfg.seed)  # the same initial weights on every rank
    dat = build_data(cfg, rank=d.rank, world_size=d.world_size)
    global_batch = cfg.data.batch_size * d.world_size * cfg.trainer.grad_accum
    lr = effective_lr(cfg.optim.lr, global_batch, cfg.optim.reference_batch)
    model = build_model(cfg, dat.classes)
    ckpts = Checkpointer(run_dir, keep_last=cfg.trainer.keep_last)
    ckpt = find_checkpoint(cfg, ckpts, arch_of(cfg, dat.classes), dat.classes)
    model.to(ex.device)
    optimizer = build_optimizer(model, cfg.optim, lr)
    scheduler = schedule.build_scheduler(optimizer, cfg.optim, global_batch, len(dat.train_ds))
    scaler = torch.amp.GradScaler(ex.device.type, enabled=ex.amp_dtype == torch.float16)
    p = restore(ckpt, model, optimizer, scheduler, scaler) if ckpt else Progress()
    if ckpt is None or d.rank > 0:  # a resumed rank 0 continues its saved RNG stream
        seed_everything(cfg.seed + 1000 * d.rank + p.step)
    step_model = wrap_model(model, cfg, d, ex)
    run_id = ckpt["wandb_run_id"] if ckpt else None
    tracker = Tracker(
        cfg, run_dir, enabled=d.is_main, images_seen=p.images_seen, wandb_run_id=run_id
    )
    monitor = build_monitor(cfg, model, p.images_seen)
    t = cfg.trainer
    logging, evaluating, saving = (schedule.Every(n, p.images_seen) for n in
                                   (t.log_every_images, t.eval_every_images, t.ckpt_every_images))  # fmt: skip
    if d.is_main:
        resumed = f" | resumed at {p.images_seen} images" if ckpt else ""
        print(f"run folder {run_dir} | {cfg.experiment_name} | effective LR {lr:g} (optim.lr "
              f"{cfg.optim.lr:g} x {global_batch}/{cfg.optim.reference_batch}) | global batch "
              f"{global_batch} | device {ex.device} | world {d.world_size}{resumed}", flush=True)  # fmt: skip

    def save(metrics: dict, *, periodic: bool, best: bool) -> None:
        if d.is_main:
            state = make_checkpoint(model, optimizer, scheduler, scaler, p, cfg, dat, tracker)
            state["metrics"] = dict(metrics, images_seen=last_eval)  # the last eval, and when
            ckpts.save(state, periodic=periodic, best=best)

    stats = torch.zeros(3, device=ex.device)  # train loss sum, top-1 sum, images since last log
    metrics = dict(ckpt["metrics"]) if ckpt else {}
    last_eval, last_save, preempted = metrics.pop("images_seen", -1), p.images_seen, False
    data_iter = batches(dat.train_loader, p.epoch, p.batch_in_epoch)
    bar = tqdm(total=t.max_images, initial=p.images_seen, unit="img", unit_scale=True,
               disable=not (d.is_main and t.progress), dynamic_ncols=True)  # fmt: skip
    clock = time.perf_counter()
    while p.images_seen < t.max_images and not preempted:
        scheduler.step_update(p.images_seen)
        armed = monitor is not None and monitor.arm(p.images_seen)
        p.epoch, p.batch_in_epoch = train_step(
            step_model, data_iter, optimizer, scaler, cfg, ex, stats
        )
        p.images_seen += global_batch
        p.step += 1
        bar.update(global_batch)
        if logging.due(p.images_seen):
            row, clock = train_row(stats, optimizer, d, clock)
            row["data/skipped"] = data.skipped_files(dat.train_ds)  # unreadable files so far
            bar.set_postfix(loss=f"{row['train/loss']:.3f}", refresh=False)
            tracker.log(row, step=p.step, images_seen=p.images_seen)
        if armed:
            tracker.log(monitor.collect(), step=p.step, images_seen=p.images_seen)
        best = False
        if evaluating.due(p.images_seen):
            metrics, best = record_eval(
                evaluate(model, dat.val_loader, cfg, ex, d), p, cfg, tracker
            )
            last_eval = p.images_seen
        preempted = distributed.any_rank(preemption.requested, d)
        periodic = saving.due(p.images_seen) or preempted
        if periodic or best:
            save(metrics, periodic=periodic, best=best)
            last_save = p.images_seen if periodic else last_save
    bar.close()
    if not preempted:
        best = False
        if last_eval != p.images_seen:
            metrics, best = record_eval(
                evaluate(model, dat.val_loader, cfg, ex, d), p, cfg, tracker
            )
        if t.pop_stats_batches and "val_popstats/top1" not in metrics:
            popstats = popstats_eval(model, dat, cfg, ex, d)
            tracker.log(popstats, step=p.step, images_seen=p.images_seen)
            metrics = metrics | popstats
        if last_save != p.images_seen or best:
            save(metrics, periodic=last_save != p.images_seen, best=best)
    requeued = preempted and preemption.requeue and d.is_main and distributed.requeue_slurm_job()
    summary = make_summary(cfg, p, metrics, preempted=preempted, requeued=requeued)
    summary_path = tracker.summary(summary, run_dir)
    tracker.close()
    distributed.barrier(d)  # every rank leaves together, after rank 0's files are written
    distributed.teardown()
    if d.is_main:
        outcome = "done" if not preempted else "preempted: checkpointed" + ", requeued" * requeued
        print(f"{outcome} at {p.images_seen} images ({p.images_seen / PAPER_BATCH:g} paper steps). "
              f"Run folder {run_dir}: metrics {tracker.path}, checkpoints {ckpts.dir}, "
              f"summary {summary_path}", flush=True)  # fmt: skip
    return summary


def train_row(
    stats: torch.Tensor, optimizer, d: distributed.Dist, since: float
) -> tuple[dict, float]:
    """Train metrics since the last log, over all ranks (one host sync per log, not per step)."""
    loss, top1, n = distributed.all_sum(stats, d).tolist()
    stats.zero_()
    now = time.perf_counter()
    row = {
        "train/loss": loss / n,
        "train/top1": top1 / n,
        "train/lr": optimizer.param_groups[0]["lr"],
        "train/images_per_s": n / (now - since),
    }
    return row, now


def record_eval(metrics: dict, p: Progress, cfg: DictConfig, tracker: Tracker) -> tuple[dict, bool]:
    """Log an eval; update the best and steps_to_target; True if it is a new best."""
    tracker.log(metrics, step=p.step, images_seen=p.images_seen)
    if p.steps_to_target is None and metrics["val/top1"] >= cfg.trainer.target_top1:
        p.steps_to_target = p.images_seen / PAPER_BATCH
    best = metrics["val/top1"] > p.best["val/top1"]
    if best:
        p.best = {"val/top1": metrics["val/top1"], "val/top5": metrics["val/top5"]}
    return metrics, best


def popstats_eval(model: nn.Module, dat: Data, cfg: DictConfig, ex: Exec, d) -> dict:
    """Algorithm 2 on a copy of the model (training continues from the moving averages), then eval."""
    with torch.random.fork_rng(devices=[]):
        pop = recompute_bn_stats(
            copy.deepcopy(model),
            model_inputs(dat.train_loader, cfg, ex),
            cfg.trainer.pop_stats_batches,
        )
    if d.enabled:
        average_bn_stats(pop, lambda x: distributed.all_sum(x, d))
    return {
        k.replace("val/", "val_popstats/"): v
        for k, v in evaluate(pop, dat.val_loader, cfg, ex, d).items()
    }


def build_monitor(cfg: DictConfig, model: nn.Module, images_seen: int) -> Monitor | None:
    m = cfg.trainer.monitor
    if not m.layers:
        return None
    return Monitor(model, list(m.layers), every_images=m.every_images, images_seen=images_seen)


def make_checkpoint(
    model, optimizer, scheduler, scaler, p: Progress, cfg, dat: Data, tracker
) -> dict:
    """The checkpoint dict of docs/DESIGN.md (model unwrapped: no DDP/compile prefixes)."""
    return {
        "format": checkpoint.FORMAT,
        "arch": arch_of(cfg, dat.classes),
        "classes": dat.classes,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler.is_enabled() else None,
        "rng": checkpoint.rng_state(),
        "data": {"epoch": p.epoch, "batch_in_epoch": p.batch_in_epoch},
        "images_seen": p.images_seen,
        "step": p.step,
        "best": dict(p.best, steps_to_target=p.steps_to_target),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "git_sha": checkpoint.git_sha(),
        "wandb_run_id": tracker.run_id,
    }


def restore(ckpt: dict, model, optimizer, scheduler, scaler) -> Progress:
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt["scaler"] is not None:
        scaler.load_state_dict(ckpt["scaler"])
    checkpoint.set_rng_state(ckpt["rng"])
    best = dict(ckpt["best"])
    return Progress(
        images_seen=ckpt["images_seen"],
        step=ckpt["step"],
        epoch=ckpt["data"]["epoch"],
        batch_in_epoch=ckpt["data"]["batch_in_epoch"],
        steps_to_target=best.pop("steps_to_target", None),
        best=best,
    )


def make_summary(cfg: DictConfig, p: Progress, metrics: dict, **extra) -> dict:
    return {
        "best/val/top1": p.best["val/top1"],
        "best/val/top5": p.best["val/top5"],
        "steps_to_target": p.steps_to_target,
        "target_top1": cfg.trainer.target_top1,
        "images_seen": p.images_seen,
        "paper_steps": p.images_seen / PAPER_BATCH,
        "experiment_name": cfg.experiment_name,
        "seed": cfg.seed,
        **metrics,
        **extra,
    }


@hydra.main(config_path=CONFIG_DIR, config_name="train", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    summary = train(cfg, run_dir=HydraConfig.get().runtime.output_dir)
    if summary["requeued"]:
        # Leave without returning a result: under hydra-submitit-launcher a returned result would
        # mark the job done, and the launcher would stop waiting for its requeued continuation.
        raise SystemExit(0)


def main() -> None:
    """bnrepro-train (a preempted run exits 0 too: it has checkpointed and, under SLURM, requeued)."""
    _hydra_main()


if __name__ == "__main__":
    main()

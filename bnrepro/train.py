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
A run whose loss or weights become non-finite stops (`diverged at paper step N: ...`), writes no
checkpoint past its last finite one, records `diverged` in summary.json and metrics.jsonl, and exits
with bnrepro.errors.EXIT_DIVERGED (0 under trainer.expect_divergence); a -m sweep goes on first.

`start` builds a Session (everything the run holds), `train` is the loop, `evaluate_and_save` the
one place that evaluates and checkpoints, `finish` writes the summary.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import hydra
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm import tqdm

from bnrepro import checkpoint, distributed, engine, provenance, schedule
from bnrepro.checkpoint import Checkpointer, Progress
from bnrepro.config import CONFIG_DIR, effective_lr, hydra_job, run_hydra_app
from bnrepro.console import Console, Pace, bars_enabled, eval_line
from bnrepro.data import skipped_files
from bnrepro.errors import UNEXPECTED_DIVERGENCE, ConfigError, exit_diverged_after
from bnrepro.evaluation import bn_stats
from bnrepro.metrics import topk_correct
from bnrepro.monitor import Monitor, build_monitor
from bnrepro.paper import PAPER_BATCH
from bnrepro.tracking import Tracker


def check_config(cfg: DictConfig) -> None:
    """Start-up checks whose messages name the fix (Hydra has already refused unknown keys, and
    bnrepro-train wrong types: bnrepro/schema.py)."""
    t = cfg.trainer
    for key in ("max_images", "eval_every_images", "ckpt_every_images", "log_every_images"):
        value = t[key]  # 1e6 is fine: a whole number of images
        if not isinstance(value, int | float) or value <= 0 or value != int(value):
            raise ConfigError(f"trainer.{key} must be a positive number of images, got {value!r}")
    if not isinstance(t.grad_accum, int) or t.grad_accum < 1:
        raise ConfigError(f"trainer.grad_accum must be an integer >= 1, got {t.grad_accum!r}")
    if t.pop_stats_batches and not (cfg.model.batch_norm or cfg.model.head_bn):
        raise ConfigError("trainer.pop_stats_batches needs a BN network: set model.batch_norm=true")
    if "member" in cfg and cfg.member not in range(len(cfg.members)):  # bn_x30_ensemble's table
        raise ConfigError(
            f"member={cfg.member!r} is no row of the ensemble's members table: use 0-"
            f"{len(cfg.members) - 1} (configs/experiment/{cfg.experiment_name}.yaml)"
        )
    if not hasattr(signal, f"SIG{t.preempt_signal.removeprefix('SIG')}"):
        raise ConfigError(f"trainer.preempt_signal={t.preempt_signal!r} is no signal (e.g. USR2)")


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
    model: nn.Module, cfg: DictConfig, dist: distributed.Dist, runtime: engine.Runtime
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


@dataclass
class Session:
    """Everything a run holds: built by `start`, then advanced by `train`."""

    cfg: DictConfig
    run_dir: Path
    dist: distributed.Dist
    runtime: engine.Runtime
    data: engine.Data
    model: nn.Module  # the unwrapped network: evaluated and checkpointed
    step_model: nn.Module  # what a step calls: `model` under SyncBN / DDP / torch.compile
    optimizer: torch.optim.Optimizer
    scheduler: schedule.LRSchedule
    scaler: torch.amp.GradScaler
    checkpointer: Checkpointer
    tracker: Tracker
    console: Console  # rank 0's lines, copied to train.log
    pace: Pace  # images/s and ETA for the eval lines
    monitor: Monitor | None
    progress: Progress
    global_batch: int
    metrics: dict  # the last evaluation's val/* (and val_popstats/*)
    last_eval: int  # images_seen of the last evaluation (-1: none yet)
    last_save: int  # images_seen of the last periodic checkpoint


def start(cfg: DictConfig, run_dir: Path, overrides: list[str] | None = None) -> Session:
    """Set up the job, build everything, resume from a checkpoint if there is one."""
    dist = distributed.setup(cfg.runtime.device, timeout_s=cfg.runtime.dist_timeout_s)
    runtime = engine.build_runtime(cfg.runtime, cfg.data, dist.device)
    engine.seed_everything(cfg.seed)  # the same initial weights on every rank
    data = engine.build_data(cfg, rank=dist.rank, world_size=dist.world_size)
    global_batch = cfg.data.batch_size * dist.world_size * cfg.trainer.grad_accum
    lr = effective_lr(cfg.optim.lr, global_batch)
    model = engine.build_model(cfg, data.classes)
    checkpointer = Checkpointer(run_dir, keep_last=cfg.trainer.keep_last)
    config = OmegaConf.to_container(cfg, resolve=True)
    arch = engine.arch_of(cfg, data.classes)
    ckpt = checkpointer.resume_point(cfg.trainer.resume, config, arch, data.classes)
    model.to(runtime.device)
    optimizer = build_optimizer(model, cfg.optim, lr)
    scheduler = schedule.build_scheduler(optimizer, cfg.optim, global_batch, len(data.train_ds))
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.amp_dtype == torch.float16)
    progress = checkpoint.restore(ckpt, model, optimizer, scheduler, scaler) if ckpt else Progress()
    # A position this run's batches cannot continue exactly is refused before anything is written.
    data.train_loader.sampler.set_epoch(progress.epoch, start_image=progress.images_in_epoch)
    if ckpt is None or dist.rank > 0:  # a resumed rank 0 continues its saved RNG stream
        engine.seed_everything(cfg.seed + 1000 * dist.rank + progress.step)
    metrics = dict(ckpt["metrics"]) if ckpt else {}  # the last eval, and when it was made
    last_eval = metrics.pop("images_seen", -1)
    tracker = Tracker(
        cfg,
        run_dir,
        enabled=dist.is_main,
        images_seen=progress.images_seen,
        wandb_run_id=ckpt["wandb_run_id"] if ckpt else None,
        overrides=overrides,
    )
    console = Console(run_dir, enabled=dist.is_main)  # the run is accepted: log from here
    resumed = f" | resumed at {progress.images_seen} images" if ckpt else ""
    console.print(f"run folder {run_dir} | {cfg.experiment_name} | effective LR {lr:g} (optim.lr "
                  f"{cfg.optim.lr:g} x {global_batch}/{PAPER_BATCH}) | global batch {global_batch} "
                  f"| device {runtime.device} | world {dist.world_size}{resumed} | "
                  f"{provenance.code_version()}")  # fmt: skip
    return Session(
        cfg, run_dir, dist, runtime, data, model,
        step_model=wrap_model(model, cfg, dist, runtime),
        optimizer=optimizer, scheduler=scheduler, scaler=scaler, checkpointer=checkpointer,
        tracker=tracker, console=console, pace=Pace(progress.images_seen),
        monitor=build_monitor(cfg.trainer.monitor, model, progress.images_seen),
        progress=progress, global_batch=global_batch,
        metrics=metrics, last_eval=last_eval, last_save=progress.images_seen,
    )  # fmt: skip


def train(
    cfg: DictConfig, run_dir: str | Path | None = None, overrides: list[str] | None = None
) -> dict:
    """Train as configured; returns the run summary (also written to <run_dir>/summary.json).
    run_dir defaults to <out_dir>/<run_name> (Hydra's run folder; main() passes Hydra's own);
    `overrides` (the command line's) are recorded in <run_dir>/overrides.yaml."""
    check_config(cfg)
    run_dir = Path(run_dir or Path(cfg.out_dir) / cfg.run_name)
    with distributed.Preemption(cfg.trainer.preempt_signal) as preemption:  # no signal lost
        s = start(cfg, run_dir, overrides)
        t, p = cfg.trainer, s.progress
        logging, evaluating, saving = (schedule.Every(n, p.images_seen) for n in
                                       (t.log_every_images, t.eval_every_images, t.ckpt_every_images))  # fmt: skip
        stats = torch.zeros(3, device=s.runtime.device)  # loss sum, top-1 sum, images since log
        data_iter = engine.training_batches(s.data.train_loader, p.epoch, p.images_in_epoch)
        bar = tqdm(total=t.max_images, initial=p.images_seen, unit="img", unit_scale=True,
                   disable=not bars_enabled(s.cfg.runtime.progress, s.dist.is_main),
                   dynamic_ncols=True)  # fmt: skip
        clock, preempted, diverged = time.perf_counter(), False, None
        while p.images_seen < t.max_images and not preempted:
            s.scheduler.step_update(p.images_seen)  # the LR for this step
            armed = s.monitor is not None and s.monitor.arm(p.images_seen)
            p.epoch, p.images_in_epoch = train_step(
                s.step_model, data_iter, s.optimizer, s.scaler, s.runtime, stats,
                grad_accum=t.grad_accum,
            )  # fmt: skip
            p.images_seen += s.global_batch
            p.step += 1
            bar.update(s.global_batch)
            preempted = distributed.any_rank(preemption.requested, s.dist)  # all ranks agree
            log, evaluate = logging.due(p.images_seen), evaluating.due(p.images_seen)
            save = saving.due(p.images_seen) or preempted
            # Checked where the host syncs anyway (log, eval, checkpoint), never per step: a
            # non-finite loss since the last log or non-finite weights never reach either.
            if (log or evaluate or save) and (diverged := divergence(s, stats)):
                break
            if log:
                row, clock = train_row(s, stats, clock)
                bar.set_postfix(loss=f"{row['train/loss']:.3f}", refresh=False)
                s.tracker.log(row, step=p.step, images_seen=p.images_seen)
            if armed:
                s.tracker.log(s.monitor.collect(), step=p.step, images_seen=p.images_seen)
            if diverged := evaluate_and_save(s, evaluate=evaluate, save=save):
                break
        bar.close()
        if not (preempted or diverged):  # the final evaluation and checkpoint, unless made here
            diverged = divergence(s, stats) or evaluate_and_save(
                s, evaluate=True, save=True, final=True
            )
        return finish(s, preempted=preempted, requeue=preemption.requeue, diverged=diverged)


def train_step(
    model: nn.Module,
    data_iter: Iterator,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    runtime: engine.Runtime,
    stats: torch.Tensor,
    *,
    grad_accum: int = 1,
) -> tuple[int, int]:
    """One optimizer step over `grad_accum` micro-batches; adds loss/top1/count to `stats`
    (no host sync here); returns the data position after it (epoch, images_in_epoch)."""
    optimizer.zero_grad(set_to_none=True)
    for micro in range(grad_accum):
        epoch, position, images, labels = next(data_iter)
        labels = labels.to(runtime.device, non_blocking=True)
        inputs = runtime.inputs(images)
        # Under DDP, all-reduce gradients only on the last micro-batch.
        no_sync = micro < grad_accum - 1 and hasattr(model, "no_sync")
        with model.no_sync() if no_sync else contextlib.nullcontext(), runtime.autocast():
            logits = model(inputs)
            loss = F.cross_entropy(logits.float(), labels)
        scaler.scale(loss / grad_accum).backward()
        with torch.no_grad():
            stats[0] += loss.detach() * len(labels)
            stats[1] += topk_correct(logits.detach().float(), labels, ks=(1,))[1].sum()
            stats[2] += len(labels)
    scaler.step(optimizer)
    scaler.update()
    return epoch, position


def train_row(s: Session, stats: torch.Tensor, since: float) -> tuple[dict, float]:
    """Train metrics since the last log, over all ranks (one host sync per log, not per step)."""
    loss, top1, n = distributed.all_sum(stats, s.dist).tolist()
    stats.zero_()
    now = time.perf_counter()
    row = {
        "train/loss": loss / n,
        "train/top1": top1 / n,
        "train/lr": s.optimizer.param_groups[0]["lr"],
        "train/images_per_s": n / (now - since),
        "data/skipped": skipped_files(s.data.train_ds),  # unreadable files so far
    }
    return row, now


def divergence(s: Session, stats: torch.Tensor) -> str | None:
    """Why the run has diverged, the same answer on every rank, or None: a non-finite training
    loss since the last log, a non-finite weight or buffer, or a mean training loss above
    trainer.diverge_loss_factor x ln(classes) (a bounded network, e.g. BN with sigmoid, can blow
    up without overflowing). One host sync: call it where the loop syncs anyway."""
    floats = {k: v for k, v in s.model.state_dict().items() if torch.is_floating_point(v)}
    flags = torch.stack([v.isfinite().all() for v in floats.values()]).logical_not()
    probe = torch.stack([stats[0], stats[2], flags.sum().to(stats.dtype)])  # NaN/inf stays so
    loss, images, bad = distributed.all_sum(probe, s.dist).tolist()
    factor = s.cfg.trainer.diverge_loss_factor
    if not math.isfinite(loss):
        return f"loss {loss}"
    if bad:
        names = [k for k, flag in zip(floats, flags.tolist(), strict=True) if flag]
        return f"non-finite weights ({', '.join(names[:3]) or 'on another rank'})"
    if factor and images and loss / images > factor * math.log(len(s.data.classes)):
        return f"loss {loss / images:.4g} > {factor:g} x ln({len(s.data.classes)} classes)"
    return None


def evaluate_and_save(s: Session, *, evaluate: bool, save: bool, final: bool = False) -> str | None:
    """Evaluate if asked (once per point), then checkpoint: ckpt_<images>.pt if `save` (once per
    point), best.pt on a new best val top-1. `final` adds Algorithm 2's population statistics
    (trainer.pop_stats_batches) to the last evaluation. Returns why the run diverged if an
    evaluation's loss is non-finite (finite weights can still overflow): then nothing is logged
    or saved."""
    p, t = s.progress, s.cfg.trainer
    best = evaluated = False
    if evaluate and s.last_eval != p.images_seen:
        evaluated = True
        metrics = engine.evaluate(
            s.model, s.data.val_loader, s.runtime, max_images=t.eval_max_images, dist=s.dist,
            progress=bars_enabled(s.cfg.runtime.progress, s.dist.is_main),
        )  # fmt: skip
        if not math.isfinite(metrics["val/loss"]):
            return f"val loss {metrics['val/loss']}"
        s.metrics = metrics
        s.last_eval = p.images_seen
        s.tracker.log(s.metrics, step=p.step, images_seen=p.images_seen)
        if p.steps_to_target is None and s.metrics["val/top1"] >= t.target_top1:
            p.steps_to_target = p.images_seen / PAPER_BATCH
        best = s.metrics["val/top1"] > p.best["val/top1"]
        if best:
            p.best = {"val/top1": s.metrics["val/top1"], "val/top5": s.metrics["val/top5"]}
    if final and t.pop_stats_batches and "val_popstats/top1" not in s.metrics:
        evaluated = True
        popstats = bn_stats.population_eval(
            s.model, s.data, s.runtime, t.pop_stats_batches,
            max_images=t.eval_max_images, dist=s.dist,
        )  # fmt: skip
        if not math.isfinite(popstats["val_popstats/loss"]):
            return f"val loss {popstats['val_popstats/loss']} (population statistics)"
        s.tracker.log(popstats, step=p.step, images_seen=p.images_seen)
        s.metrics = s.metrics | popstats
    if evaluated:
        s.console.print(eval_line(
            s.metrics, step=p.step, images_seen=p.images_seen, best_top1=p.best["val/top1"],
            rate=s.pace.rate(p.images_seen), eta=s.pace.eta(p.images_seen, t.max_images),
        ))  # fmt: skip
    periodic = save and s.last_save != p.images_seen
    if (periodic or best) and s.dist.is_main:
        state = checkpoint.assemble(
            s.model, s.optimizer, s.scheduler, s.scaler, p,
            arch=engine.arch_of(s.cfg, s.data.classes), classes=s.data.classes,
            config=OmegaConf.to_container(s.cfg, resolve=True), wandb_run_id=s.tracker.run_id,
            metrics=dict(s.metrics, images_seen=s.last_eval),  # the last eval, and when
        )  # fmt: skip
        s.checkpointer.save(state, periodic=periodic, best=best)
        s.tracker.log_checkpoint(s.checkpointer, images_seen=p.images_seen, periodic=periodic,
                                 best=best)  # fmt: skip
    if periodic:
        s.last_save = p.images_seen
    return None


def finish(s: Session, *, preempted: bool, requeue: bool, diverged: str | None = None) -> dict:
    """Requeue under SLURM if asked, write summary.json, close, and say where everything is.
    `diverged`: why the run stopped as diverged (recorded in metrics.jsonl, summary.json, W&B)."""
    p = s.progress
    requeued = (
        preempted
        and not diverged
        and requeue
        and s.dist.is_main
        and distributed.requeue_slurm_job()
    )
    diverged_at = p.images_seen / PAPER_BATCH if diverged else None
    if diverged:
        row = {"diverged": True, "diverged_at_paper_step": diverged_at, "diverged_reason": diverged}
        s.tracker.log(row, step=p.step, images_seen=p.images_seen)
    summary = {
        "best/val/top1": p.best["val/top1"],
        "best/val/top5": p.best["val/top5"],
        "steps_to_target": p.steps_to_target,
        "target_top1": s.cfg.trainer.target_top1,
        "images_seen": p.images_seen,
        "paper_steps": p.images_seen / PAPER_BATCH,
        "experiment_name": s.cfg.experiment_name,
        "seed": s.cfg.seed,
        **s.metrics,
        "preempted": preempted,
        "requeued": requeued,
        "diverged": bool(diverged),
        "diverged_at_paper_step": diverged_at,
        "diverged_reason": diverged,
        "expect_divergence": s.cfg.trainer.expect_divergence,
    }
    summary_path = s.tracker.summary(summary, s.run_dir)
    s.tracker.close()
    distributed.barrier(s.dist)  # every rank leaves together, after rank 0's files are written
    distributed.teardown()
    if diverged:
        last = (s.checkpointer.existing() or ["none (no checkpoint was written)"])[-1]
        s.console.print(f"diverged at paper step {diverged_at:g}: {diverged}; the last finite "
                        f"checkpoint is {last}")  # fmt: skip
    else:
        outcome = "done" if not preempted else "preempted: checkpointed" + ", requeued" * requeued
        if s.cfg.trainer.expect_divergence and not preempted:
            outcome += " without diverging (trainer.expect_divergence: it was expected to)"
        s.console.print(f"{outcome} at {p.images_seen} images ({p.images_seen / PAPER_BATCH:g} "
                        f"paper steps). Run folder {s.run_dir}: metrics {s.tracker.path}, "
                        f"checkpoints {s.checkpointer.dir}, summary {summary_path}, "
                        f"log {s.console.path}")  # fmt: skip
    s.console.close()
    return summary


def train_job(cfg: DictConfig) -> None:
    """bnrepro-train's Hydra job: train in Hydra's run folder, recording the command line."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    run_dir = hydra_cfg.runtime.output_dir
    summary = train(cfg, run_dir=run_dir, overrides=list(hydra_cfg.overrides.task))
    if summary["requeued"]:
        # Leave without returning a result: under hydra-submitit-launcher a returned result would
        # mark the job done, and the launcher would stop waiting for its requeued continuation.
        raise SystemExit(0)
    if summary["diverged"] and not cfg.trainer.expect_divergence:
        UNEXPECTED_DIVERGENCE.append(run_dir)


@hydra.main(config_path=CONFIG_DIR, config_name="train", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    with hydra_job("bnrepro-train", cfg, "train"):
        train_job(cfg)


def main(argv: list[str] | None = None) -> None:
    """python -m bnrepro.train [overrides] (torchrun): bnrepro-train (bnrepro/cli.py) without
    its fast start. A preempted run exits 0 too: it has checkpointed and, under SLURM,
    requeued; a diverged one exits EXIT_DIVERGED unless trainer.expect_divergence; exit
    statuses: bnrepro/errors.py."""
    with exit_diverged_after():
        run_hydra_app(_hydra_main, argv, "bnrepro-train")


if __name__ == "__main__":
    main()

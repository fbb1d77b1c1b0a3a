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
and exits 0; on SIGTERM (scancel, a time-limit kill) or Ctrl-C it checkpoints and exits 0 without
requeueing (a second Ctrl-C stops at once).
A run whose loss or weights become non-finite stops (`diverged at paper step N: ...`), writes no
checkpoint past its last finite one, records `diverged` in summary.json and metrics.jsonl, and ends
with errors.Diverged, exit status 3 (0 under trainer.expect_divergence; a -m sweep goes on first).

`start` builds the Session (what the run is made of; its moving state is `progress`); `loop`
trains, calling `check_divergence`, `log_training`, `evaluate_run` and `save_checkpoints` when
the cadence says; `finish` writes the summary.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm import tqdm

from bnrepro import builders, checkpoint, distributed, engine, provenance, schedule
from bnrepro.checkpoint import Checkpointer, Progress, RunFolder
from bnrepro.config import check_run, effective_lr, global_batch, has_bn, lr_rule, pop_stats_batches
from bnrepro.console import Console, Pace, bars_enabled, eval_line
from bnrepro.data import DataIdentity, identify, skipped_files, training_sampler
from bnrepro.errors import CommandError, Diverged, first_names
from bnrepro.evaluation import bn_stats
from bnrepro.monitor import Monitor, build_monitor
from bnrepro.paper import PAPER_BATCH
from bnrepro.schema import TrainSchema, check
from bnrepro.stats import fraction_interval
from bnrepro.tracking import Tracker


@dataclass
class Session:
    """What a run is made of, built once by `start`; everything that moves is `progress`."""

    cfg: DictConfig
    folder: RunFolder
    dist: distributed.Dist
    runtime: engine.Runtime
    data: builders.Data
    model: nn.Module  # the unwrapped network: evaluated and checkpointed
    step_model: nn.Module  # what a step calls: `model` under SyncBN / DDP / torch.compile
    optimizer: torch.optim.Optimizer
    scheduler: schedule.LRSchedule
    scaler: torch.amp.GradScaler
    cadence: schedule.Cadence  # when to log, evaluate, checkpoint
    checkpointer: Checkpointer
    tracker: Tracker
    console: Console  # rank 0's lines, copied to train.log
    pace: Pace  # images/s and ETA for the eval lines
    monitor: Monitor | None
    global_batch: int
    pop_stats_batches: int  # Algorithm 2's batches at the final evaluation (0: none)
    progress: Progress
    lock: checkpoint.FolderLock  # rank 0's claim on the run folder (released when it ends)


def start(cfg: DictConfig, folder: RunFolder, overrides: list[str] | None = None) -> Session:
    """Set up the job, check everything, build everything, resume from a checkpoint if there is
    one. Every check (check_start, on every rank together) comes before the first write, and a
    refused start leaves the disk as it was (FolderLock.abandon)."""
    dist = distributed.setup(cfg.runtime.device, timeout_s=cfg.runtime.dist_timeout_s)
    runtime = engine.build_runtime(cfg.runtime, cfg.data, dist.device)
    checkpointer = Checkpointer(folder, keep_last=cfg.trainer.keep_last)
    config = OmegaConf.to_container(cfg, resolve=True)
    lock = checkpoint.FolderLock(folder.path)  # rank 0's: one process per run folder
    try:
        identity, ckpt = distributed.agree(
            dist, lambda: check_start(cfg, dist, lock, checkpointer, config)
        )
        builders.check_same_data(identity, dist)
    except BaseException as refused:
        lock.abandon()
        if isinstance(refused, CommandError):  # raised on every rank together (agree): so that
            distributed.barrier(dist)  # no rank removes its empty folders while rank 0's lock is in
        raise
    try:
        builders.seed_everything(cfg.seed)  # the same initial weights on every rank
        data = builders.build_data(cfg, rank=dist.rank, world_size=dist.world_size,
                                   local_rank=dist.local_rank, identity=identity)  # fmt: skip
        batch = global_batch(cfg.data.batch_size, dist.world_size, cfg.trainer.grad_accum)
        lr = effective_lr(cfg.optim.lr, batch, cfg.optim.lr_scaling)
        model = builders.build_model(cfg, data.classes).to(runtime.device)
        optimizer = builders.build_optimizer(model, cfg.optim, lr)
        scheduler = schedule.build_scheduler(optimizer, cfg.optim, batch, len(data.train_ds))
        scaler = torch.amp.GradScaler(runtime.device.type,
                                      enabled=runtime.amp_dtype == torch.float16)  # fmt: skip
        progress = Progress()
        if ckpt:
            progress = checkpoint.restore(ckpt, model, optimizer, scheduler, scaler)
        data.train_loader.sampler.set_epoch(progress.epoch, start_image=progress.images_in_epoch)
        if ckpt is None or dist.rank > 0:  # a resumed rank 0 continues its saved RNG stream
            builders.seed_everything(cfg.seed + 1000 * dist.rank + progress.step)
        monitor = build_monitor(cfg.trainer.monitor, model, progress.images_seen)
        step_model = builders.wrap_model(model, cfg, dist, runtime)
        tracker = Tracker(  # the run is accepted: its files are written from here on
            cfg, folder, enabled=dist.is_main, images_seen=progress.images_seen,
            wandb_run_id=ckpt["wandb_run_id"] if ckpt else None, overrides=overrides,
        )  # fmt: skip
    except BaseException:
        lock.abandon()
        raise
    console = Console(folder.log, enabled=dist.is_main)
    resumed = f" | resumed at {progress.images_seen} images" if ckpt else ""
    population = pop_stats_batches(cfg.trainer.pop_stats_batches, has_bn(cfg.model),
                                   data.train_loader.sampler.batches_per_epoch)  # fmt: skip
    console.print(f"run folder {folder.path} | {cfg.experiment_name} | effective LR {lr:g} (optim.lr "
                  f"{cfg.optim.lr:g} {lr_rule(cfg.optim.lr_scaling, batch)}) | global batch {batch} "
                  f"| device {runtime.device} | world {dist.world_size}{resumed} | Algorithm 2 at "
                  f"the end: {population or 'no'} batches | {provenance.code_version()}")  # fmt: skip
    return Session(
        cfg, folder, dist, runtime, data, model, step_model=step_model,
        optimizer=optimizer, scheduler=scheduler, scaler=scaler,
        cadence=schedule.Cadence(cfg.trainer, progress.images_seen),
        checkpointer=checkpointer, tracker=tracker, console=console,
        pace=Pace(progress.images_seen), monitor=monitor, global_batch=batch,
        pop_stats_batches=population, progress=progress, lock=lock,
    )  # fmt: skip


def check_start(
    cfg: DictConfig,
    dist: distributed.Dist,
    lock: checkpoint.FolderLock,
    checkpointer: Checkpointer,
    config: dict,
) -> tuple[DataIdentity, dict | None]:
    """Everything a start can be refused for, writing nothing (but rank 0's lock on the run
    folder): no other process in it, the data (what it holds, from its file lists alone: a
    synthetic tree not generated yet included), the checkpoint to resume (its model, classes,
    config and data) and the data position to continue. Returns (data identity, checkpoint)."""
    # Rank 0's lock first, agreed on: every rank then reaches identify's collectives together.
    distributed.agree(dist, lambda: lock.acquire() if dist.is_main else None)
    identity = identify(cfg.data, rank=dist.rank, local_rank=dist.local_rank,
                        world_size=dist.world_size)  # fmt: skip
    classes = list(identity.classes)
    arch = builders.arch_of(cfg, classes)
    ckpt = checkpointer.resume_point(cfg.trainer.resume, config, arch, classes, identity.record())
    epoch, position = checkpoint.data_position(ckpt) if ckpt else (0, 0)
    sampler = training_sampler(cfg.data, identity.train_files, seed=cfg.seed, rank=dist.rank,
                               world_size=dist.world_size)  # fmt: skip
    sampler.set_epoch(epoch, start_image=position)  # refuses a position it cannot continue
    return identity, ckpt


def train(
    cfg: DictConfig, run_dir: str | Path | None = None, overrides: list[str] | None = None
) -> dict:
    """Train as configured; returns the run summary (also written to <run_dir>/summary.json).
    run_dir defaults to <out_dir>/<run_name> (the command passes Hydra's run folder);
    `overrides` (the command line's) are recorded in <run_dir>/overrides.yaml. A config that
    did not come through the command (a test's, a notebook's) gets its checks here."""
    check(cfg, TrainSchema)
    check_run(cfg)
    folder = RunFolder(run_dir or Path(cfg.out_dir) / cfg.run_name)
    with distributed.Preemption(cfg.trainer.preempt_signal) as preemption:  # no signal lost
        s = start(cfg, folder, overrides)  # Ctrl-C here stops it at once, nothing written
        preemption.catch_ctrl_c()  # from here, Ctrl-C checkpoints and stops
        try:
            try:
                preempted, diverged = loop(s, preemption), None
            except Diverged as why:  # nothing was evaluated, logged or saved past this point
                preempted, diverged = False, str(why)
            return finish(s, preempted=preempted, requeue=preemption.requeue, diverged=diverged)
        finally:
            s.lock.release()  # the next process may have the run folder


def loop(s: Session, preemption: distributed.Preemption) -> bool:
    """Train to the budget (then the final evaluation and checkpoint) or to a preemption
    (checkpointed); returns whether it was preempted. Raises Diverged."""
    t, p = s.cfg.trainer, s.progress
    stats = torch.zeros(3, device=s.runtime.device)  # loss sum, top-1 sum, images since log
    batches = engine.training_batches(s.data.train_loader, p.epoch, p.images_in_epoch)
    bar = tqdm(total=t.max_images, initial=p.images_seen, unit="img", unit_scale=True,
               disable=not bars_enabled(s.cfg.runtime.progress, s.dist.is_main),
               dynamic_ncols=True)  # fmt: skip
    clock = time.perf_counter()
    while p.images_seen < t.max_images:
        s.scheduler.step_update(p.images_seen)  # the LR for this step
        armed = s.monitor is not None and s.monitor.arm(p.images_seen)
        p.epoch, p.images_in_epoch = engine.train_step(
            s.step_model, batches, s.optimizer, s.scaler, s.runtime, stats, grad_accum=t.grad_accum
        )
        p.images_seen += s.global_batch
        p.step += 1
        bar.update(s.global_batch)
        preempted = distributed.any_rank(preemption.requested, s.dist)  # all ranks agree
        log, evaluating, saving = s.cadence.due(p.images_seen)
        if log or evaluating or saving or preempted:
            # Where the host syncs anyway, never per step: a non-finite loss since the last log
            # or non-finite weights never reach a log line, an evaluation or a checkpoint.
            check_divergence(s, stats)
        if log:
            clock = log_training(s, stats, clock, bar)
        if armed:
            s.tracker.log(s.monitor.collect(), step=p.step, images_seen=p.images_seen)
        best = evaluating and evaluate_run(s)
        if saving or preempted or best:
            save_checkpoints(s, periodic=saving or preempted, best=best)
        if preempted:
            bar.close()
            return True
    bar.close()
    check_divergence(s, stats)  # the final evaluation and checkpoint, unless made at this point
    save_checkpoints(s, periodic=True, best=evaluate_run(s, final=True))
    return False


def log_training(s: Session, stats: torch.Tensor, since: float, bar: tqdm) -> float:
    """One metrics row of the training since the last log, over all ranks (one host sync per
    log, not per step); returns the time it was made."""
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
    bar.set_postfix(loss=f"{row['train/loss']:.3f}", refresh=False)
    s.tracker.log(row, step=s.progress.step, images_seen=s.progress.images_seen)
    return now


def check_divergence(s: Session, stats: torch.Tensor) -> None:
    """Raise Diverged, the same on every rank, for a non-finite training loss since the last log,
    a non-finite weight or buffer, or a mean training loss above trainer.diverge_loss_factor x
    ln(classes) (a bounded network, e.g. BN with sigmoid, can blow up without overflowing). One
    host sync: call it where the loop syncs anyway."""
    floats = {k: v for k, v in s.model.state_dict().items() if torch.is_floating_point(v)}
    flags = torch.stack([v.isfinite().all() for v in floats.values()]).logical_not()
    probe = torch.stack([stats[0], stats[2], flags.sum().to(stats.dtype)])  # NaN/inf stays so
    loss, images, bad = distributed.all_sum(probe, s.dist).tolist()
    factor, classes = s.cfg.trainer.diverge_loss_factor, len(s.data.classes)
    if not math.isfinite(loss):
        raise Diverged(f"loss {loss}")
    if bad:
        names = [k for k, flag in zip(floats, flags.tolist(), strict=True) if flag]
        raise Diverged(f"non-finite weights ({first_names(names) or 'on another rank'})")
    if factor and images and loss / images > factor * math.log(classes):
        raise Diverged(f"loss {loss / images:.4g} > {factor:g} x ln({classes} classes)")


def evaluate_run(s: Session, *, final: bool = False) -> bool:
    """Evaluate (once per point: not again where the last evaluation was made), and at the end
    also with Algorithm 2's population statistics (trainer.pop_stats_batches); print the line,
    log it, keep the best. Returns whether val top-1 is a new best. Raises Diverged for a
    non-finite val loss (finite weights can still overflow): then nothing is logged."""
    p, t = s.progress, s.cfg.trainer
    best = evaluated = False
    if p.last_eval != p.images_seen:
        metrics = engine.evaluate(
            s.model, s.data.val_loader, s.runtime, max_images=t.eval_max_images, dist=s.dist,
            progress=bars_enabled(s.cfg.runtime.progress, s.dist.is_main),
        )  # fmt: skip
        if not math.isfinite(metrics["val/loss"]):
            raise Diverged(f"val loss {metrics['val/loss']}")
        p.metrics, p.last_eval, evaluated = metrics, p.images_seen, True
        s.tracker.log(metrics, step=p.step, images_seen=p.images_seen)
        if p.steps_to_target is None and metrics["val/top1"] >= t.target_top1:
            p.steps_to_target = p.images_seen / PAPER_BATCH
        best = metrics["val/top1"] > p.best["val/top1"]
        if best:
            p.best = {"val/top1": metrics["val/top1"], "val/top5": metrics["val/top5"]}
    if final and s.pop_stats_batches and "val_popstats/top1" not in p.metrics:
        popstats = bn_stats.population_eval(
            s.model, s.data, s.runtime, s.pop_stats_batches,
            max_images=t.eval_max_images, dist=s.dist,
        )  # fmt: skip
        if not math.isfinite(popstats["val_popstats/loss"]):
            raise Diverged(f"val loss {popstats['val_popstats/loss']} (population statistics)")
        s.tracker.log(popstats, step=p.step, images_seen=p.images_seen)
        p.metrics, evaluated = p.metrics | popstats, True
    if evaluated:
        s.console.print(eval_line(
            p.metrics, step=p.step, images_seen=p.images_seen, best_top1=p.best["val/top1"],
            rate=s.pace.rate(p.images_seen), eta=s.pace.eta(p.images_seen, t.max_images),
        ))  # fmt: skip
    return best


def save_checkpoints(s: Session, *, periodic: bool, best: bool) -> None:
    """Checkpoint on rank 0: ckpt_<images>.pt if `periodic` (once per point), best.pt if `best`."""
    p = s.progress
    periodic = periodic and p.last_save != p.images_seen
    if (periodic or best) and s.dist.is_main:
        state = checkpoint.assemble(
            s.model, s.optimizer, s.scheduler, s.scaler, p,
            arch=builders.arch_of(s.cfg, s.data.classes), classes=s.data.classes,
            config=OmegaConf.to_container(s.cfg, resolve=True), wandb_run_id=s.tracker.run_id,
            data_identity=s.data.identity.record(),
        )  # fmt: skip
        written = s.checkpointer.save(state, periodic=periodic, best=best)
        s.tracker.log_checkpoints(written, images_seen=p.images_seen)
    if periodic:
        p.last_save = p.images_seen


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
        **p.metrics,
        **intervals(p.metrics, p.best),
        "preempted": preempted,
        "requeued": requeued,
        "diverged": bool(diverged),
        "diverged_at_paper_step": diverged_at,
        "diverged_reason": diverged,
        "expect_divergence": s.cfg.trainer.expect_divergence,
    }
    s.tracker.summary(summary)
    sync = s.tracker.sync_command()
    s.tracker.close()
    distributed.barrier(s.dist)  # every rank leaves together, after rank 0's files are written
    distributed.teardown()
    f = s.folder
    if diverged:
        last = f.newest() or "none (no checkpoint was written)"
        s.console.print(f"diverged at paper step {diverged_at:g}: {diverged}; the last finite "
                        f"checkpoint is {last}")  # fmt: skip
    else:
        outcome = "done" if not preempted else "preempted: checkpointed" + ", requeued" * requeued
        if s.cfg.trainer.expect_divergence and not preempted:
            outcome += " without diverging (trainer.expect_divergence: it was expected to)"
        s.console.print(f"{outcome} at {p.images_seen} images ({p.images_seen / PAPER_BATCH:g} "
                        f"paper steps). Run folder {f.path}: metrics {f.metrics}, checkpoints "
                        f"{f.checkpoints}, summary {f.summary}, log {f.log}")  # fmt: skip
    if sync:
        s.console.print(f"W&B logged offline; upload every start of this run with: {sync}")
    s.console.close()
    return summary


def intervals(metrics: dict, best: dict) -> dict:
    """The 95% Wilson interval ([low, high]) of every accuracy in the summary: the last
    evaluation's val/* and val_popstats/*, and the best's (counted over as many val images)."""
    out = {}
    for name, values, key in (("val", metrics, "val"), ("val_popstats", metrics, "val_popstats"),
                              ("best/val", best, "val")):  # fmt: skip
        count = metrics.get(f"{key}/images")
        for k in ("top1", "top5"):
            value = values.get(f"{key}/{k}")
            if count and value is not None:
                out[f"{name}/{k}_ci95"] = list(fraction_interval(value, count))
    return out


def train_job(cfg: DictConfig, run_dir: str, overrides: list[str]) -> dict:
    """bnrepro-train's job (cli.py): train in Hydra's run folder, recording the command line.
    A run that diverged where it was not expected ends in Diverged (exit status 3)."""
    summary = train(cfg, run_dir=run_dir, overrides=overrides)
    if summary["diverged"] and not cfg.trainer.expect_divergence:
        raise Diverged(
            f"{run_dir} diverged at paper step {summary['diverged_at_paper_step']:g} "
            f"({summary['diverged_reason']}): lower optim.lr, or set "
            "trainer.expect_divergence=true where divergence is the expected result"
        )
    return summary


if __name__ == "__main__":  # python -m bnrepro.train (torchrun): exactly bnrepro-train
    from bnrepro.cli import bnrepro_train

    bnrepro_train()

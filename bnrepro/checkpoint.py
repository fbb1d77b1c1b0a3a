"""Checkpoints: the format, its assembly and restore, atomic save, validated load, and the run
folder's files (newest valid to resume from, keep-last-K + best).

Format "bnrepro-checkpoint/1" (docs/DESIGN.md): a torch.save'd dict that `torch.load(...,
weights_only=True)` reads (the numpy RNG state is stored as a tensor), so loading one runs no code.
Files: <run_dir>/checkpoints/ckpt_<images_seen:012d>.pt (the last `keep_last`) and best.pt.
"""

from __future__ import annotations

import os
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bnrepro.errors import UserError
from bnrepro.provenance import git_sha, version

FORMAT = "bnrepro-checkpoint/1"

# Keys that may change between a run and its resumption without making it another run: how it
# runs (runtime.*: device, precision, compile), where the data lives and how it is read, how it is
# logged, evaluated and checkpointed, how long it goes, and where SLURM runs it (cluster.*, present
# under hydra/launcher=slurm only).
_MAY_CHANGE = (
    "runtime.",
    "trainer.",
    "logger.",
    "out_dir",
    "data.root",
    "data.num_workers",
    "data.decode",
    "cluster.",
)
# ... except this trainer key, which changes the optimisation itself (the global batch).
_MUST_MATCH = ("trainer.grad_accum",)


class CheckpointError(UserError):
    """A checkpoint that cannot be used for this run; the message says why and what to do."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (full disk, I/O error); the earlier ones are intact."""

    def __init__(self, path: Path, err: OSError) -> None:
        reason = err.strerror or str(err)
        super().__init__(
            f"could not write checkpoint {path}: {reason}. The run stopped here; the earlier "
            f"checkpoints in {path.parent} are intact: free space (or fix the disk) and run the "
            "same command again to resume from the newest of them."
        )


class NonFiniteError(RuntimeError):
    """A model state holding NaN or infinity (a diverged run): never written, never evaluated."""


def nonfinite_tensors(state: dict) -> list[str]:
    """The names of a state dict's floating tensors that hold a NaN or an infinity."""
    return [
        name
        for name, tensor in state.items()
        if torch.is_floating_point(tensor) and not bool(tensor.isfinite().all())
    ]


@dataclass
class Progress:
    """Where a run is; saved in every checkpoint."""

    images_seen: int = 0
    step: int = 0
    epoch: int = 0
    images_in_epoch: int = 0  # of the epoch's global order, over all ranks (data/sampler.py)
    best: dict = field(default_factory=lambda: {"val/top1": 0.0, "val/top5": 0.0})
    steps_to_target: float | None = None  # paper steps at the first val/top1 >= target


def assemble(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,  # schedule.LRSchedule: state_dict / load_state_dict
    scaler: torch.amp.GradScaler,
    progress: Progress,
    *,
    arch: dict,
    classes: list[str],
    config: dict,
    wandb_run_id: str | None,
    metrics: dict,
) -> dict:
    """The checkpoint dict of docs/DESIGN.md. `model` is the unwrapped module (no DDP or compile
    prefixes); `metrics` is the last eval with the images_seen it was made at."""
    return {
        "format": FORMAT,
        "arch": arch,
        "classes": classes,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler.is_enabled() else None,
        "rng": rng_state(),
        "data": {"epoch": progress.epoch, "images_in_epoch": progress.images_in_epoch},
        "images_seen": progress.images_seen,
        "step": progress.step,
        "best": dict(progress.best, steps_to_target=progress.steps_to_target),
        "config": config,
        "git_sha": git_sha(),
        "bnrepro_version": version(),
        "wandb_run_id": wandb_run_id,
        "metrics": metrics,
    }


def restore(
    ckpt: dict,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    scaler: torch.amp.GradScaler,
) -> Progress:
    """Load a checkpoint's states into the run's objects (and the RNGs); returns its Progress.
    The scheduler keeps nothing: the LR follows this run's global batch (schedule.py)."""
    images_in_epoch = _images_in_epoch(ckpt)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt["scaler"] is not None:
        scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    best = dict(ckpt["best"])
    return Progress(
        images_seen=ckpt["images_seen"],
        step=ckpt["step"],
        epoch=ckpt["data"]["epoch"],
        images_in_epoch=images_in_epoch,
        steps_to_target=best.pop("steps_to_target", None),
        best=best,
    )


def _images_in_epoch(ckpt: dict) -> int:
    """The data position in global images; older checkpoints saved batches per rank instead."""
    data = ckpt["data"]
    if "images_in_epoch" in data:
        return data["images_in_epoch"]
    if data["batch_in_epoch"] == 0:
        return 0
    # Before the global position, rank r took every world-th image of the same epoch order, so
    # b batches per rank used its first b x (global micro-batch) images, which a step advanced by
    # images_seen / step / grad_accum. Shard shuffling's order has changed since: refuse it.
    if ckpt["config"]["data"]["shuffle"] == "shards":
        raise CheckpointError(
            f"this checkpoint stopped inside epoch {data['epoch']} under data.shuffle=shards "
            "with an older bnrepro whose shard order has changed since: the rest of that epoch "
            "cannot be continued exactly. Resume with the bnrepro version that wrote it, or "
            "start a new run"
        )
    micro_batch = ckpt["images_seen"] // ckpt["step"] // ckpt["config"]["trainer"]["grad_accum"]
    return data["batch_in_epoch"] * micro_batch


def rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: Path, ckpt: dict) -> None:
    """Write atomically: a reader (or a preempted job) sees the old file or the new, never half.
    A failed write (full disk, I/O error) removes its temp file, leaves every earlier checkpoint
    as it was and raises CheckpointWriteError. Refuses (NonFiniteError) a model state with a NaN or an infinity: a diverged run leaves its
    last finite checkpoint as the newest one."""
    bad = nonfinite_tensors(ckpt.get("model") or {})
    if bad:
        raise NonFiniteError(
            f"refusing to write {path}: non-finite model state in {', '.join(bad[:3])}"
            + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        )
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)  # a half-written file would only fill the disk further
        raise CheckpointWriteError(path, err) from err


def load(path: str | Path) -> dict:
    """Read and validate one checkpoint; CheckpointError if unreadable, truncated or foreign."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: check the path")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a truncated zip / pickle
        raise CheckpointError(
            f"checkpoint {path} is unreadable (truncated or corrupt: {type(e).__name__}: {e}). "
            "Delete it or use another checkpoint (training resumes from the newest valid one)."
        ) from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a bnrepro checkpoint (format {FORMAT!r} expected)")
    return ckpt


def input_normalization(ckpt: dict) -> tuple[list[float], list[float]] | None:
    """The mean and std (fractions of 255, as configs/data/*.yaml) the checkpoint's network takes
    its inputs normalised with: its config's data.mean/std (converted weights store theirs
    there, bnrepro/weights.py); None if its config has none."""
    data = (ckpt.get("config") or {}).get("data") or {}
    if "mean" not in data or "std" not in data:
        return None
    return [float(x) for x in data["mean"]], [float(x) for x in data["std"]]


def check_compatible(ckpt: dict, arch: dict, classes: list[str], path: str | Path) -> None:
    """Refuse a checkpoint of another architecture, number of classes or class list."""
    saved, run = _flat_arch(ckpt["arch"]), _flat_arch(arch)
    diffs = [
        f"{k}: checkpoint {saved.get(k)!r} vs run {run.get(k)!r}"
        for k in sorted(set(saved) | set(run))
        if saved.get(k) != run.get(k)
    ]
    if diffs:
        raise CheckpointError(
            f"checkpoint {path} holds another architecture ({'; '.join(diffs)}). Resume from a "
            "checkpoint of this model, or set model.* / data to match it."
        )
    if list(ckpt["classes"]) != list(classes):
        raise CheckpointError(
            f"checkpoint {path} was trained on another class list ({len(ckpt['classes'])} "
            f"classes, first {ckpt['classes'][:3]}) than this data ({len(classes)} classes, first "
            f"{classes[:3]}). Use the same dataset, or another checkpoint."
        )


def _flat_arch(arch: dict) -> dict:
    return {"name": arch["name"], **arch["kwargs"]}


def config_diff(saved: dict, current: dict) -> list[str]:
    """Dotted keys whose values differ and that define the run (not paths, cadence, logging).

    Only keys both configs have are compared: a key that a newer bnrepro added (or removed) must
    not stop a preempted run from resuming after an upgrade.
    """
    a, b = _flatten(saved), _flatten(current)
    return sorted(
        k
        for k in set(a) & set(b)
        if a[k] != b[k] and (k.startswith(_MUST_MATCH) or not k.startswith(_MAY_CHANGE))
    )


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class Checkpointer:
    """Writes ckpt_<images>.pt (the loop decides when), keeps the last `keep_last` plus best.pt,
    and finds the newest valid checkpoint of a run folder to resume from."""

    def __init__(self, run_dir: Path, *, keep_last: int) -> None:
        if keep_last < 1:
            raise ValueError(f"trainer.keep_last must be >= 1, got {keep_last}")
        self.dir = Path(run_dir) / "checkpoints"
        self.keep_last = keep_last

    def path(self, images_seen: int) -> Path:
        return self.dir / f"ckpt_{images_seen:012d}.pt"

    def existing(self) -> list[Path]:
        """Periodic checkpoints, oldest first."""
        return sorted(self.dir.glob("ckpt_*.pt"))

    def newest_valid(self) -> tuple[Path, dict] | None:
        """The newest checkpoint that loads; unreadable ones are reported and skipped."""
        for path in reversed(self.existing()):
            try:
                return path, load(path)
            except CheckpointError as e:
                warnings.warn(f"skipping {e}", stacklevel=2)
        return None

    def resume_point(
        self, resume: str | None, config: dict, arch: dict, classes: list[str]
    ) -> dict | None:
        """The checkpoint a run continues from: `resume` (trainer.resume), else this folder's
        newest valid one, else None. Refuses, before anything is written, a checkpoint of another
        model or class list, or a folder that holds a run of another config."""
        if resume:
            path, ckpt = resume, load(resume)
        elif found := self.newest_valid():
            path, ckpt = found
            diff = config_diff(ckpt["config"], config)
            if diff:
                raise CheckpointError(
                    f"run folder {self.dir.parent} holds a run with another config (differs in: "
                    f"{', '.join(diff)}). Use another out_dir or seed for a new run, or "
                    f"trainer.resume={path} to continue that checkpoint with this config."
                )
        else:
            return None
        check_compatible(ckpt, arch, classes, path)
        return ckpt

    def save(self, ckpt: dict, *, periodic: bool, best: bool) -> None:
        """periodic: write ckpt_<images>.pt and prune to the last keep_last; best: best.pt."""
        if periodic:
            path = self.path(ckpt["images_seen"])
            save(path, ckpt)
            # Prune older ones only: a newer file can be a corrupt one skipped at resume time.
            older = [p for p in self.existing() if p.name <= path.name]
            for old in older[: -self.keep_last]:
                old.unlink()
        if best and periodic:  # a hard link: no second write; pruning ckpt_* leaves best.pt intact
            tmp = self.dir / "best.pt.tmp"
            try:
                tmp.unlink(missing_ok=True)
                os.link(path, tmp)
                os.replace(tmp, self.dir / "best.pt")
            except OSError as err:
                tmp.unlink(missing_ok=True)
                raise CheckpointWriteError(self.dir / "best.pt", err) from err
        elif best:
            save(self.dir / "best.pt", ckpt)

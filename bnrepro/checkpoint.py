"""The run folder and the checkpoint: the one owner of every file name in a run folder, of the
checkpoint format (assembly, restore, atomic save, validated load) and of "checkpoint -> model".

    folder = RunFolder("outputs/bn_x30_seed0")   # .checkpoints, .best, .metrics, .summary, ...
    folder.newest()                              # the end of training: its newest ckpt_*.pt
    find(["outputs/multirun/2026-..."], "last")  # files, globs, run folders, multirun folders
    loaded = load_model("ckpt.pt")               # the network rebuilt with its own architecture

Format "bnrepro-checkpoint/1" (docs/DESIGN.md): a torch.save'd dict that `torch.load(...,
weights_only=True)` reads (the numpy RNG state is stored as a tensor), so loading one runs no code.

torch is imported inside the functions that read or write tensors: the plotting command
(bnrepro-report) asks this module for the run folder's file names without paying for torch.
"""

from __future__ import annotations

import glob
import os
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bnrepro.errors import UserError, first_names
from bnrepro.provenance import git_sha, version
from bnrepro.sweeps import suggested_run_name

if TYPE_CHECKING:
    import torch

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
    """A checkpoint or run folder that cannot be used; the message says why and what to do."""


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


# ---- the run folder --------------------------------------------------------------------------


BEST = "best.pt"  # a run's best val top-1 so far


def is_best(path: str | Path) -> bool:
    """Is this a run's best.pt (picked on the val set during training)?"""
    return Path(path).name == BEST


class RunFolder:
    """Every file of a training run's folder, by name (docs/DESIGN.md "Run folder"):

    checkpoints/ckpt_<images_seen:012d>.pt   the last trainer.keep_last periodic ones
    checkpoints/best.pt                      the best val top-1 so far
    metrics.jsonl  summary.json  config.yaml  overrides.yaml  train.log
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        self.best = self.checkpoints / BEST
        self.metrics = self.path / "metrics.jsonl"
        self.summary = self.path / "summary.json"
        self.config = self.path / "config.yaml"
        self.overrides = self.path / "overrides.yaml"
        self.log = self.path / "train.log"

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def periodic(self, images_seen: int) -> Path:
        """The periodic checkpoint written at `images_seen` (zero-padded: name order = age)."""
        return self.checkpoints / f"ckpt_{images_seen:012d}.pt"

    def periodic_checkpoints(self) -> list[Path]:
        """The periodic checkpoints, oldest first."""
        return sorted(self.checkpoints.glob("ckpt_*.pt"))

    def newest(self) -> Path | None:
        """The newest periodic checkpoint (the end of training), unread; None if there is none."""
        found = self.periodic_checkpoints()
        return found[-1] if found else None

    def holds_checkpoints(self) -> bool:
        return self.checkpoints.is_dir()

    @staticmethod
    def below(root: str | Path, having: str = "checkpoints") -> list[RunFolder]:
        """The run folders at or below `root` that hold their `having` ("checkpoints": a folder
        of checkpoints; "metrics": a metrics file, a run that has logged), sorted."""
        root = Path(root)
        name = getattr(RunFolder(root), having).name
        if (root / name).exists():
            return [RunFolder(root)]
        return [RunFolder(p.parent) for p in sorted(root.rglob(name))]


def find(specs: str | list[str], which: str = "last") -> list[Path]:
    """Checkpoint files from files, globs, run folders (their newest ckpt_*.pt, or best.pt with
    which="best"), folders holding run folders (a training multirun) and folders of .pt files."""
    specs = [specs] if isinstance(specs, str) else list(specs)
    if not specs:
        raise CheckpointError("checkpoints is empty: give files, folders or globs")
    found = []
    for spec in map(str, specs):
        paths = sorted(glob.glob(spec)) if glob.has_magic(spec) else [spec]
        if not paths:
            raise CheckpointError(f"checkpoints: {spec!r} matches no file or folder")
        for path in map(Path, paths):
            found += _expand(path, which)
    duplicates = sorted({str(p) for p in found if found.count(p) > 1})
    if duplicates:
        raise CheckpointError(f"checkpoints lists the same file twice: {', '.join(duplicates)}")
    return found


def _expand(path: Path, which: str) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist: check the path")
    runs = RunFolder.below(path)
    if runs:  # a run folder, or a multirun folder: one checkpoint per run
        return [_run_checkpoint(run, which) for run in runs]
    files = sorted(path.glob("*.pt"))
    if not files:
        raise CheckpointError(f"folder {path} holds no .pt file and no run folder")
    return files


def _run_checkpoint(run: RunFolder, which: str) -> Path:
    """A run's newest checkpoint (which="last": the end of training) or its best.pt (which="best":
    the best single-crop val top-1 during training, so selected on the val set)."""
    path = {"last": run.newest, "best": lambda: run.best if run.best.is_file() else None}[which]()
    if path is None and which == "best":
        raise CheckpointError(f"run folder {run.path} has no {BEST}: use member_checkpoint=last")
    if path is None:
        raise CheckpointError(
            f"run folder {run.path} has no checkpoint yet (nothing in {run.checkpoints})"
        )
    return path


# ---- the format --------------------------------------------------------------------------------


def nonfinite_tensors(state: dict) -> list[str]:
    """The names of a state dict's floating tensors that hold a NaN or an infinity."""
    import torch

    return [
        name
        for name, tensor in state.items()
        if torch.is_floating_point(tensor) and not bool(tensor.isfinite().all())
    ]


@dataclass
class Progress:
    """Where a run is, everything the loop advances: saved in every checkpoint."""

    images_seen: int = 0
    step: int = 0
    epoch: int = 0
    images_in_epoch: int = 0  # of the epoch's global order, over all ranks (data/sampler.py)
    best: dict = field(default_factory=lambda: {"val/top1": 0.0, "val/top5": 0.0})
    steps_to_target: float | None = None  # paper steps at the first val/top1 >= target
    metrics: dict = field(default_factory=dict)  # the last evaluation's val/* (val_popstats/*)
    last_eval: int = -1  # images_seen of that evaluation (-1: none yet)
    last_save: int = -1  # images_seen of the last periodic checkpoint (-1: none in this process)


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
) -> dict:
    """The checkpoint dict of docs/DESIGN.md. `model` is the unwrapped module (no DDP or compile
    prefixes)."""
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
        "metrics": dict(progress.metrics, images_seen=progress.last_eval),  # the last eval, when
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
    metrics = dict(ckpt.get("metrics") or {})
    return Progress(
        images_seen=ckpt["images_seen"],
        step=ckpt["step"],
        epoch=ckpt["data"]["epoch"],
        images_in_epoch=images_in_epoch,
        steps_to_target=best.pop("steps_to_target", None),
        best=best,
        last_eval=metrics.pop("images_seen", -1),
        metrics=metrics,
        last_save=ckpt["images_seen"],
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
    import numpy as np
    import torch

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: Path, ckpt: dict) -> None:
    """Write atomically: a reader (or a preempted job) sees the old file or the new, never half.
    A failed write (full disk, I/O error) removes its temp file, leaves every earlier checkpoint
    as it was and raises CheckpointWriteError. Refuses (NonFiniteError) a model state with a NaN
    or an infinity: a diverged run leaves its last finite checkpoint as the newest one."""
    import torch

    bad = nonfinite_tensors(ckpt.get("model") or {})
    if bad:
        raise NonFiniteError(
            f"refusing to write {path}: non-finite model state in {first_names(bad)}"
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
    import torch

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


# ---- checkpoint -> model -------------------------------------------------------------------


@dataclass
class Loaded:
    """A checkpoint's network, rebuilt on the CPU in eval mode, and what it says about itself."""

    path: Path
    model: torch.nn.Module
    arch: dict  # {"name", "kwargs"}: timm.create_model(name, **kwargs)
    classes: list[str]
    config: dict  # the resolved training config ({} if it has none)
    images_seen: int | None
    normalization: tuple[list[float], list[float]] | None  # its inputs' mean, std
    wandb_run_id: str | None  # the training run's: its checkpoints' artifact model-<id>

    @property
    def in_chans(self) -> int | None:
        return self.arch["kwargs"].get("in_chans")


def load_model(path: str | Path) -> Loaded:
    """Load a checkpoint and rebuild its network with timm from its own architecture; refuses
    (CheckpointError) an unknown architecture, a class list that does not match the classifier,
    non-finite weights, or weights that do not fit."""
    import timm

    import bnrepro  # noqa: F401  (registers bn_inception with timm)

    path = Path(path)
    ckpt = load(path)
    arch = ckpt.get("arch") or {}
    if not timm.is_model(arch.get("name")):
        raise CheckpointError(
            f"checkpoint {path} has architecture {arch.get('name')!r}, which is not in timm's "
            "registry: import the module that registers it, or drop this checkpoint"
        )
    classes = list(ckpt.get("classes") or [])
    num_classes = arch.get("kwargs", {}).get("num_classes")
    if num_classes != len(classes):
        raise CheckpointError(
            f"checkpoint {path} has num_classes={num_classes} but a class list of "
            f"{len(classes)}: it is damaged, retrain or drop it"
        )
    bad = nonfinite_tensors(ckpt["model"])
    if bad:
        raise CheckpointError(
            f"checkpoint {path} holds non-finite weights ({first_names(bad)}): its run "
            "diverged; drop it, or use the run's last finite checkpoint"
        )
    model = timm.create_model(arch["name"], **arch["kwargs"])
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path}: weights do not fit {arch['name']}: {e}") from e
    config = ckpt.get("config") or {}
    return Loaded(
        path=path,
        model=model.eval(),
        arch=arch,
        classes=classes,
        config=config,
        images_seen=ckpt.get("images_seen"),
        normalization=input_normalization(ckpt),
        wandb_run_id=ckpt.get("wandb_run_id"),
    )


def read_if_checkpoint(path: str | Path) -> dict | None:
    """The checkpoint at `path` if it is a bnrepro checkpoint, None for any other readable file
    (timm then loads it as a plain state dict); CheckpointError for a missing or corrupt one."""
    import torch

    try:
        data = torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise CheckpointError(f"checkpoint {path} does not exist: check the path") from e
    except Exception as e:  # torch raises several types for a truncated zip / pickle
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(e).__name__}: {e})") from e
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


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
    a, b = defining_keys(saved), defining_keys(current)
    return sorted(k for k in set(a) & set(b) if a[k] != b[k])


def defining_keys(config: dict) -> dict:
    """The dotted keys of a resolved config that define the run, with their values: what
    config_diff compares, and what bnrepro-report groups runs by (not paths, cadence, logging)."""
    return {
        k: v
        for k, v in _flatten(config).items()
        if k.startswith(_MUST_MATCH) or not k.startswith(_MAY_CHANGE)
    }


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# ---- a run's checkpoints -------------------------------------------------------------------


class Checkpointer:
    """Writes a run folder's checkpoints (the loop decides when), keeps the last `keep_last`
    plus best.pt, and finds the checkpoint a run resumes from."""

    def __init__(self, folder: RunFolder, *, keep_last: int) -> None:
        self.folder = folder
        self.keep_last = keep_last

    def newest_valid(self) -> tuple[Path, dict] | None:
        """The newest checkpoint that loads; unreadable ones are reported and skipped."""
        for path in reversed(self.folder.periodic_checkpoints()):
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
                    f"run folder {self.folder.path} holds a run with another config (differs "
                    f"in: {', '.join(diff)}). For a new run give it its own folder: "
                    f"run_name={suggested_run_name(config, diff)} (or another out_dir or seed); "
                    f"to continue that checkpoint with this config: trainer.resume={path}"
                )
        else:
            return None
        check_compatible(ckpt, arch, classes, path)
        return ckpt

    def save(self, ckpt: dict, *, periodic: bool, best: bool) -> list[Path]:
        """periodic: write ckpt_<images>.pt and prune to the last keep_last; best: best.pt.
        Returns the files written."""
        written = []
        if periodic:
            path = self.folder.periodic(ckpt["images_seen"])
            save(path, ckpt)
            written.append(path)
            # Prune older ones only: a newer file can be a corrupt one skipped at resume time.
            older = [p for p in self.folder.periodic_checkpoints() if p.name <= path.name]
            for old in older[: -self.keep_last]:
                old.unlink()
        if best and periodic:  # a hard link: no second write; pruning ckpt_* leaves best.pt intact
            tmp = self.folder.best.with_name(self.folder.best.name + ".tmp")
            try:
                tmp.unlink(missing_ok=True)
                os.link(path, tmp)
                os.replace(tmp, self.folder.best)
            except OSError as err:
                tmp.unlink(missing_ok=True)
                raise CheckpointWriteError(self.folder.best, err) from err
        elif best:
            save(self.folder.best, ckpt)
        if best:
            written.append(self.folder.best)
        return written

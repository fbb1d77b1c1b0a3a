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

import datetime
import fcntl
import glob
import json
import os
import random
import socket
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bnrepro.errors import UserError, first_names, one_line
from bnrepro.provenance import git_sha, version
from bnrepro.sweeps import suggested_run_name

if TYPE_CHECKING:
    import torch

FORMAT = "bnrepro-checkpoint/1"
# What every checkpoint holds (a converted one too), and what a training run resumes from.
MODEL_KEYS = ("arch", "classes", "model")
TRAINING_KEYS = ("optimizer", "scheduler", "scaler", "rng", "data", "images_seen", "step", "best",
                 "config", "wandb_run_id")  # fmt: skip

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


class FolderBusy(CheckpointError):
    """Another process holds the folder (FolderLock); the message names it."""


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
    run.lock                                 while a process trains in it (FolderLock)
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
        self.lock = self.path / LOCK

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


# ---- making and claiming output folders -------------------------------------------------------


LOCK = "run.lock"  # in a run (or ensemble) folder while a process writes there


def make_folders(folder: str | Path, what: str = "run folder") -> list[Path]:
    """Create `folder` and its missing parents; returns the folders this call created, outermost
    first (what `remove_made` may take back). CheckpointError naming the folder if it cannot be
    created (no permission, a file in the way, a read-only filesystem)."""
    folder = Path(folder).absolute()
    missing = [p for p in (folder, *folder.parents) if not p.exists()][::-1]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(
            f"cannot create the {what} {folder} ({e.strerror or e}): set out_dir to a folder "
            "you can write"
        ) from e
    return missing


def remove_made(folder: str | Path, made: list[Path]) -> None:
    """Remove `folder` and its parents again, innermost first, where this process made them
    (`made`, from make_folders; a folder inside one of them is new too) and they are still
    empty: a refused start leaves no trace. A folder that holds anything, or that was there
    before, is never touched."""
    made = [Path(p).absolute() for p in made]
    for p in (Path(folder).absolute(), *Path(folder).absolute().parents):
        if not any(p == m or m in p.parents for m in made):
            return
        try:
            p.rmdir()  # only an empty folder: never anything inside it
        except OSError:
            return


class FolderLock:
    """An exclusive claim on an output folder by one process: fcntl.flock on `<folder>/run.lock`,
    which the kernel releases when the process dies, so a crashed run never leaves it stuck. The
    file names its holder (pid, host, start time) for the refusal of a second process, and is
    removed when the holder is done.

    Not covered: hosts sharing a filesystem that does not pass flock between them (NFS without
    its lock service, Lustre mounted with localflock): there a second host is not refused. A
    filesystem without locks at all gives a warning, and the run goes on unlocked."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK
        self.fd: int | None = None
        self.made: list[Path] = []  # the folders acquire() created

    def acquire(self, what: str = "run folder") -> FolderLock:
        """Claim the folder (created if missing); FolderBusy naming the holder if another
        process has it."""
        self.made = make_folders(self.folder, what)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                self._undo(created_file=False)
                raise FolderBusy(
                    f"{what} {self.folder} is in use by {holder}: wait until it ends, or use "
                    "another folder (out_dir=..., seed=...). A crashed process holds nothing: "
                    "the lock ends with its process"
                ) from None
            except OSError as e:  # a filesystem without locks (ENOLCK, EOPNOTSUPP)
                os.close(fd)
                self._undo(created_file=True)
                warnings.warn(
                    f"cannot lock {self.path} ({e.strerror or e}): this filesystem has no locks, "
                    f"so a second process in {self.folder} would not be refused",
                    stacklevel=2,
                )
                return self
            if _same_file(fd, self.path):
                break
            os.close(fd)  # its holder removed it on the way out: lock the file that is there now
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": datetime.datetime.now().isoformat(timespec="seconds")}  # fmt: skip
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(holder) + "\n").encode())
        self.fd = fd
        return self

    def release(self) -> None:
        """Done: remove the lock file (while still holding it), then let go."""
        if self.fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self.fd)
            self.fd = None

    def abandon(self) -> None:
        """After a refused start: release, and remove the folders acquire() made if they are
        still empty, so the disk is as it was."""
        self.release()
        self._undo(created_file=False)

    def _undo(self, *, created_file: bool) -> None:
        if created_file:
            self.path.unlink(missing_ok=True)
        remove_made(self.folder, self.made)

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    """Is the open file `fd` the one at `path` now (not one its holder removed meanwhile)?"""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _holder(fd: int) -> str:
    """'pid 123 on host h since 2026-11-24T12:00:00', from the lock file of the holder."""
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode())
        return f"pid {holder['pid']} on host {holder['host']} since {holder['started']}"
    except (OSError, ValueError, KeyError, TypeError):  # being written this very moment
        return "another process"


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
    seen: dict[tuple[int, int], Path] = {}
    for path in found:  # one file reached twice: a path twice, a symbolic or a hard link
        stat = path.stat()
        first = seen.setdefault((stat.st_dev, stat.st_ino), path)
        if first is not path:
            how = f"({path})" if first == path else f"({first} and {path}: a link)"
            raise CheckpointError(
                f"checkpoints names the same file twice {how}: it would count as two members; "
                "list each network once"
            )
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
    data_identity: dict | None = None,
) -> dict:
    """The checkpoint dict of docs/DESIGN.md. `model` is the unwrapped module (no DDP or compile
    prefixes); `data_identity` the data's file counts and fingerprints (data.DataIdentity.record),
    which a resume compares."""
    return {
        "format": FORMAT,
        "arch": arch,
        "classes": classes,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler.is_enabled() else None,
        "rng": rng_state(),
        "data": {
            "epoch": progress.epoch,
            "images_in_epoch": progress.images_in_epoch,
            "identity": data_identity,
        },  # fmt: skip
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


def data_position(ckpt: dict) -> tuple[int, int]:
    """(epoch, images_in_epoch) where a run continues this checkpoint (global images)."""
    return ckpt["data"]["epoch"], _images_in_epoch(ckpt)


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
    out = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            out = _Writes(f)
            torch.save(ckpt, out)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:  # a full disk, an I/O error, Ctrl-C: never a partial file
        tmp.unlink(missing_ok=True)  # a half-written file would only fill the disk further
        # torch's zip writer turns a failed write into a RuntimeError of its own: the OSError
        # behind it (ENOSPC: a full disk) is the one the file object saw.
        cause = out.error if out is not None and out.error is not None else err
        if isinstance(cause, OSError):
            raise CheckpointWriteError(path, cause) from err
        raise


class _Writes:
    """A file's write() for torch.save that keeps the OSError torch's writer would hide."""

    def __init__(self, f) -> None:
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


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
    found = ckpt.get("format") if isinstance(ckpt, dict) else None
    if isinstance(found, str) and found.startswith("bnrepro-checkpoint/") and found != FORMAT:
        raise CheckpointError(
            f"{path} is a checkpoint of another bnrepro version (format {found!r}; this one "
            f"reads {FORMAT!r}): use the bnrepro version that wrote it"
        )
    if found != FORMAT:
        raise CheckpointError(f"{path} is not a bnrepro checkpoint (format {FORMAT!r} expected)")
    missing = [k for k in MODEL_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} lacks {', '.join(missing)}: it is damaged or was not written by "
            "bnrepro; use another checkpoint"
        )
    return ckpt


def load_training(path: str | Path) -> dict:
    """A checkpoint a run can continue (load, then every training key); CheckpointError naming
    what it lacks (a converted checkpoint holds weights only)."""
    ckpt = load(path)
    missing = [k for k in TRAINING_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} lacks {', '.join(missing)}, so a run cannot continue it (weights "
            "only, e.g. converted, or damaged): start a new run, or resume from a training "
            "checkpoint"
        )
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


def _check_same_data(ckpt: dict, now: dict, path: str | Path, *, explicit: bool) -> None:
    """A resume continues the data position of the checkpoint's training set, which means
    nothing for another set: refused. With trainer.resume=PATH (continue this file with this
    config) the run goes on loudly from the start of the next epoch instead. A changed val set
    is warned about (the best val top-1 so far was measured on the other one). Checkpoints
    from before data fingerprints were kept cannot be checked: said, and continued."""
    then = ckpt["data"].get("identity")
    if then is None:
        warnings.warn(
            f"checkpoint {path} does not record its data's file list (an older bnrepro): that "
            "the training set is the same cannot be checked",
            stacklevel=3,
        )
        return
    from bnrepro.data.datasets import data_changes  # torch: only when a run resumes

    changed = data_changes(then, now)
    if not changed:
        return
    if not changed[0].startswith("train"):
        warnings.warn(f"the val set changed since {path} ({changed[0]}): its best val top-1 "
                      "was measured on the other one", stacklevel=3)  # fmt: skip
        return
    if not explicit:
        raise CheckpointError(
            f"the training set changed since {path} was written ({'; '.join(changed)}): its data "
            "position means nothing for these files. Restore the data it was trained on, start "
            f"a new run (another out_dir or seed), or trainer.resume={path} to continue it on "
            "this data from the start of its next epoch"
        )
    epoch, position = data_position(ckpt)
    ckpt["data"] = dict(ckpt["data"], epoch=epoch + (position > 0), images_in_epoch=0)
    warnings.warn(
        f"the training set changed since {path} ({'; '.join(changed)}): continuing from the "
        f"start of epoch {ckpt['data']['epoch']} (trainer.resume), not at its data position",
        stacklevel=3,
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
        """The newest periodic checkpoint a run can continue; newer ones that cannot be used are
        reported (a warning with the reason) and kept. None for a folder without checkpoints;
        a folder that has some but none usable, or that holds a finished run's best.pt or
        summary.json without any, is refused (CheckpointError naming each file and why): it is
        never restarted from scratch over them."""
        problems = []
        for path in reversed(self.folder.periodic_checkpoints()):
            try:
                ckpt = load_training(path)
            except CheckpointError as e:
                problems.append(one_line(e))
                continue
            for problem in problems:
                warnings.warn(f"skipping {problem}", stacklevel=2)
            return path, ckpt
        left = [p for p in (self.folder.best, self.folder.summary) if p.exists()]
        if problems or left:
            why = "; ".join(problems) or f"it holds {' and '.join(map(str, left))}"
            raise CheckpointError(
                f"run folder {self.folder.path} holds a run but no checkpoint it can continue "
                f"({why}). Nothing was changed: move those files away (or use another out_dir "
                "or seed) to start afresh, or trainer.resume=PATH to continue a checkpoint"
            )
        return None

    def resume_point(
        self,
        resume: str | None,
        config: dict,
        arch: dict,
        classes: list[str],
        data_identity: dict | None = None,
    ) -> dict | None:
        """The checkpoint a run continues from: `resume` (trainer.resume), else this folder's
        newest valid one, else None. Refuses, before anything is written, a checkpoint of another
        model or class list, a folder that holds a run of another config, or (auto-resume) a
        training set that changed since (data_identity: data.DataIdentity.record)."""
        if resume:
            path, ckpt = resume, load_training(resume)
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
        if data_identity is not None:
            _check_same_data(ckpt, data_identity, path, explicit=bool(resume))
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

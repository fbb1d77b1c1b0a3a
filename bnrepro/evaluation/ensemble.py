"""bnrepro-ensemble: checkpoints alone and as an ensemble, on 1, 10 or 144 crops per image.

The paper's Figure 4 (section 4.2.3): six BN-x30 networks, 144 crops each (GoogLeNet section 7).
A member's prediction for an image is its softmax probabilities averaged over the image's crops;
the ensemble's is the arithmetic mean of the members' predictions.

    bnrepro-ensemble checkpoints=[a.pt,b.pt] crops=10                      # the synthetic data
    bnrepro-ensemble 'checkpoints=outputs/bn_x30_ensemble_member*' data=imagenet data.root=/datasets/imagenet
    bnrepro-ensemble checkpoints=outputs/multirun/2026-11-24_12-00-00 crops=1 save_probs=true

A run folder gives its last checkpoint (member_checkpoint=last, the default) or its best.pt
(member_checkpoint=best: picked on the val set that is then reported, which the results say).
Every member is checked (exists, loads, a timm architecture, finite weights, the same class list
as the others and as the val set) before any image is read. With pop_stats_batches, Algorithm 2 runs on each
member's own training pipeline (its checkpoint's data config: colour strength, batch size, ...).
Each image is decoded once; its crops are cut from the decoded tensor on the device
(bnrepro/evaluation/crops.py); the crops of several images go through each member as one
batch, and all members see a batch before the next is loaded. Each member's crops are
normalised with its checkpoint's data mean/std (its training config's; converted Caffe weights
store theirs, bnrepro/weights.py), else with this command's data.mean/std. Writes results.json,
results.md (and probs.npz with save_probs=true) into the run folder; exit status 0 on success,
2 with a one-line message on bad input.
"""

from __future__ import annotations

import glob
import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import hydra
import numpy as np
import timm
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm import tqdm

from bnrepro import checkpoint, distributed, engine
from bnrepro.config import CONFIG_DIR, hydra_job, run_hydra_app
from bnrepro.console import bars_enabled
from bnrepro.data import ArrayImages, ImageFiles, build_datasets, build_train_loader
from bnrepro.data.transforms import decode
from bnrepro.errors import UserError
from bnrepro.evaluation.bn_stats import population_model
from bnrepro.evaluation.crops import CROP_COUNTS, cut_crops
from bnrepro.metrics import topk_correct
from bnrepro.paper import FIGURE4
from bnrepro.provenance import environment, file_sha256
from bnrepro.tracking import checkpoint_artifact, checkpoint_artifact_name, wandb_dir


class EnsembleError(UserError):
    """Bad input to the evaluator; the message names the problem and the fix."""


# ---- members -----------------------------------------------------------------------------


CHECKPOINT_CHOICES = ("last", "best")


def find_checkpoints(specs: str | list[str], member_checkpoint: str = "last") -> list[Path]:
    """Checkpoint files from files, globs, run folders (their newest ckpt_*.pt, or best.pt with
    member_checkpoint="best"), folders holding run folders (a training multirun) and folders of
    .pt files."""
    if member_checkpoint not in CHECKPOINT_CHOICES:
        raise EnsembleError(
            f"member_checkpoint must be one of {CHECKPOINT_CHOICES}, got {member_checkpoint!r}"
        )
    specs = [specs] if isinstance(specs, str) else list(specs)
    if not specs:
        raise EnsembleError("checkpoints is empty: give files, folders or globs")
    found = []
    for spec in map(str, specs):
        paths = sorted(glob.glob(spec)) if glob.has_magic(spec) else [spec]
        if not paths:
            raise EnsembleError(f"checkpoints: {spec!r} matches no file or folder")
        for path in map(Path, paths):
            found += _expand(path, member_checkpoint)
    duplicates = sorted({str(p) for p in found if found.count(p) > 1})
    if duplicates:
        raise EnsembleError(f"checkpoints lists the same file twice: {', '.join(duplicates)}")
    return found


def _expand(path: Path, which: str) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.exists():
        raise EnsembleError(f"checkpoint {path} does not exist: check the path")
    if (path / "checkpoints").is_dir():  # a run folder
        return [_run_checkpoint(path, which)]
    runs = sorted(d.parent for d in path.rglob("checkpoints") if d.is_dir())
    if runs:  # a multirun folder: one member per run
        return [_run_checkpoint(run, which) for run in runs]
    files = sorted(path.glob("*.pt"))
    if not files:
        raise EnsembleError(f"folder {path} holds no .pt file and no run folder")
    return files


def _run_checkpoint(run_dir: Path, which: str) -> Path:
    """A run's newest checkpoint (the end of training), or with which="best" its best.pt (best
    single-crop val top-1 during training: selected on the val set)."""
    ckpts = run_dir / "checkpoints"
    if which == "best":
        if not (ckpts / "best.pt").is_file():
            raise EnsembleError(f"run folder {run_dir} has no best.pt: use member_checkpoint=last")
        return ckpts / "best.pt"
    periodic = sorted(ckpts.glob("ckpt_*.pt"))  # zero-padded images_seen: name order = age
    if not periodic:
        raise EnsembleError(f"run folder {run_dir} has no checkpoint yet (nothing in {ckpts})")
    return periodic[-1]


@dataclass
class Member:
    path: Path
    name: str  # the run name (e.g. bn_x30_ensemble_member0_seed0), else the file name
    experiment: str | None
    model: nn.Module
    classes: list[str]
    in_chans: int | None
    images_seen: int | None
    config: dict  # the checkpoint's resolved training config ({} if it has none)
    normalization: tuple[list[float], list[float]] | None = None  # its inputs' mean, std
    wandb_run_id: str | None = None  # the training run's: its checkpoints' artifact model-<id>

    @property
    def selected_on_val(self) -> bool:
        """best.pt: the checkpoint with the best val top-1 during training."""
        return self.path.name == "best.pt"

    def changes(self) -> dict:
        """The ensemble changes this member trained with (section 4.2.3), and its table row."""
        model = self.config.get("model") or {}
        keys = ("init_gain", "dropout", "head_bn")
        return {"member": self.config.get("member"), **{k: model.get(k) for k in keys}}


def load_member(path: Path) -> Member:
    """Load and rebuild one checkpoint (on the CPU); EnsembleError if it cannot be used."""
    try:
        ckpt = checkpoint.load(path)
    except checkpoint.CheckpointError as e:
        raise EnsembleError(f"ensemble member {path}: {e}") from e
    arch = ckpt.get("arch") or {}
    if not timm.is_model(arch.get("name")):
        raise EnsembleError(
            f"checkpoint {path} has architecture {arch.get('name')!r}, which is not in timm's "
            "registry: import the module that registers it, or drop this checkpoint"
        )
    classes = list(ckpt.get("classes") or [])
    num_classes = arch.get("kwargs", {}).get("num_classes")
    if num_classes != len(classes):
        raise EnsembleError(
            f"checkpoint {path} has num_classes={num_classes} but a class list of "
            f"{len(classes)}: it is damaged, retrain or drop it"
        )
    bad = checkpoint.nonfinite_tensors(ckpt["model"])
    if bad:
        raise EnsembleError(
            f"checkpoint {path} holds non-finite weights ({', '.join(bad[:3])}): its run diverged; "
            "drop it, or use the run's last finite checkpoint"
        )
    model = timm.create_model(arch["name"], **arch["kwargs"])
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise EnsembleError(f"checkpoint {path}: weights do not fit {arch['name']}: {e}") from e
    config = ckpt.get("config") or {}
    return Member(
        path=path,
        name=config.get("run_name") or path.stem,
        experiment=config.get("experiment_name"),
        model=model.eval(),
        classes=classes,
        in_chans=arch["kwargs"].get("in_chans"),
        images_seen=ckpt.get("images_seen"),
        config=config,
        wandb_run_id=ckpt.get("wandb_run_id"),
        normalization=checkpoint.input_normalization(ckpt),
    )


def check_members(members: list[Member], classes: list[str], in_chans: int) -> None:
    """Same class list (order included) everywhere, and the val set's channel count."""
    for m in members:
        if m.classes != members[0].classes:
            raise EnsembleError(
                f"{m.path} was trained on another class list ({len(m.classes)} classes, first "
                f"{m.classes[:3]}) than {members[0].path} ({len(members[0].classes)}, first "
                f"{members[0].classes[:3]}): an ensemble needs members of one dataset"
            )
        if m.classes != list(classes):
            raise EnsembleError(
                f"{m.path} was trained on {len(m.classes)} classes (first {m.classes[:3]}), the "
                f"val set has {len(classes)} (first {list(classes)[:3]}): use the members' dataset "
                "(data=..., data.root=...)"
            )
        if m.in_chans not in (None, in_chans):
            raise EnsembleError(
                f"{m.path} takes {m.in_chans} input channels, the data has {in_chans}: use the "
                "members' dataset"
            )


# ---- evaluation --------------------------------------------------------------------------


@dataclass
class Evaluation:
    """Counts of correct top-1/top-5 per model set: [set, member or ensemble (last), k]."""

    correct: torch.Tensor
    images: int
    skipped: int  # unreadable files left out
    probs: list[np.ndarray] | None  # per set: [members, images, classes], with save_probs
    labels: np.ndarray | None


class ValImages(torch.utils.data.Dataset):
    """The val set's images decoded whole (uint8 [3, H, W]) with their labels: the crops are cut
    later, on the device, from this one decode. An unreadable file gives None (skipped, counted)."""

    def __init__(self, val_ds: ImageFiles | ArrayImages, limit: int | None) -> None:
        self.val_ds = val_ds
        self.n = len(val_ds) if limit is None else min(limit, len(val_ds))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, int]:
        if not isinstance(self.val_ds, ImageFiles):  # in-memory images (MNIST)
            return self.val_ds[i]
        image = self.val_ds.try_load(i, decode)  # RGB uint8 [H, W, 3]; None: skipped, warned
        label = int(self.val_ds.split.labels[i])
        return (None if image is None else torch.from_numpy(image).permute(2, 0, 1)), label


def _collate(batch: list) -> tuple[list[torch.Tensor], torch.Tensor, int]:
    """(decoded images, labels, number of unreadable files left out)."""
    good = [(image, label) for image, label in batch if image is not None]
    return [im for im, _ in good], torch.tensor([lb for _, lb in good]), len(batch) - len(good)


def image_loader(
    images: ValImages, batch_images: int, num_workers: int, device: torch.device
) -> torch.utils.data.DataLoader:
    """Batches of whole decoded images (a list: their sizes differ), decoded in the workers."""
    return torch.utils.data.DataLoader(
        images, batch_size=max(1, batch_images), num_workers=num_workers, collate_fn=_collate,
        pin_memory=device.type == "cuda",
    )  # fmt: skip


@torch.no_grad()
def evaluate_crops(
    model_sets: list[list[nn.Module]],
    batches,
    *,
    n_crops: int,
    resolution: int,
    runtime: engine.Runtime,
    member_runtimes: list[engine.Runtime] | None = None,
    save_probs: bool = False,
    progress: bool = False,
    total: int | None = None,
) -> Evaluation:
    """Each model alone and each set's ensemble, on `batches` of (decoded images, labels,
    number of unreadable files left out).

    member_runtimes[i].inputs (default: runtime.inputs) makes the uint8 crops member i's inputs:
    a member may need its own normalisation (converted weights); members that share a Runtime
    share the normalised batch. Probabilities are averaged over an image's crops, then over a
    set's members (GoogLeNet section 7, paper section 4.2.3).
    """
    n_sets, n_members = len(model_sets), len(model_sets[0])
    member_runtimes = member_runtimes or [runtime] * n_members
    # counts stay on the device: no host sync per batch (only save_probs copies to the host)
    correct = torch.zeros(n_sets, n_members + 1, 2, dtype=torch.long, device=runtime.device)
    kept, labels_kept, seen, skipped = [], [], 0, 0
    bar = tqdm(total=total, unit="img", disable=not progress, dynamic_ncols=True)
    for images, labels, unreadable in batches:
        skipped += unreadable
        bar.update(len(images) + unreadable)
        if not images:
            continue
        crops = torch.cat([cut_crops(im.to(runtime.device), n_crops, resolution) for im in images])
        inputs = {}  # one normalised batch per distinct Runtime
        labels = labels.to(runtime.device)
        probs = []  # [sets][members] of [images, classes]
        for models in model_sets:
            probs.append([])
            for model, member_runtime in zip(models, member_runtimes, strict=True):
                key = id(member_runtime)
                if key not in inputs:
                    inputs[key] = member_runtime.inputs(crops)
                with runtime.autocast():
                    logits = model(inputs[key])
                p = logits.float().softmax(-1).view(len(images), n_crops, -1).mean(1)
                probs[-1].append(p)
        p = torch.stack([torch.stack(ps) for ps in probs])  # [sets, members, images, classes]
        p = torch.cat([p, p.mean(1, keepdim=True)], dim=1)  # the ensembles last
        hits = topk_correct(p.flatten(0, 2), labels.repeat(n_sets * (n_members + 1)), (1, 5))
        for i, k in enumerate((1, 5)):
            correct[..., i] += hits[k].view(n_sets, n_members + 1, -1).sum(-1)
        if save_probs:
            kept.append(p[:, :-1].cpu())
            labels_kept.append(labels.cpu())
        seen += len(images)
    bar.close()
    if seen == 0:
        raise EnsembleError("the val set gave no image")
    probs_np = list(torch.cat(kept, dim=2).numpy()) if save_probs else None
    labels_np = torch.cat(labels_kept).numpy() if save_probs else None
    return Evaluation(correct.cpu(), seen, skipped, probs_np, labels_np)


# ---- the app -----------------------------------------------------------------------------


# Where the data is and how it is read: this command's. The rest of a member's data config
# (augmentation, batch size, shuffling) is how its training batches were made.
_DATA_LOCATION = ("root", "num_workers", "decode", "synthetic")


def member_data_config(data: DictConfig, member: Member) -> DictConfig:
    """The training pipeline `member` was trained with (its checkpoint's data config: colour
    strength, batch size, ...), reading the images where `data` says they are."""
    own = member.config.get("data")
    if not own:  # a checkpoint without its config: this command's pipeline
        return data
    return OmegaConf.merge(own, {k: data[k] for k in _DATA_LOCATION if k in data})


def member_runtimes(members: list[Member], runtime: engine.Runtime) -> list[engine.Runtime]:
    """Each member's Runtime: `runtime` with the member's own input normalisation where its
    checkpoint stores one (the data config it trained with, or converted weights' mean/std);
    members with equal normalisations share one Runtime (one normalised batch)."""
    shared: dict[tuple, engine.Runtime] = {}
    out = []
    for m in members:
        if m.normalization is None:
            out.append(runtime)
            continue
        key = (tuple(m.normalization[0]), tuple(m.normalization[1]))
        if key not in shared:
            own = runtime.with_normalization(*m.normalization)
            same = torch.equal(own.mean, runtime.mean) and torch.equal(own.std, runtime.std)
            shared[key] = runtime if same else own
        out.append(shared[key])
    return out


def _pop_stats_models(
    members: list[Member], cfg: DictConfig, runtimes: list[engine.Runtime]
) -> list:
    """Copies of the members with Algorithm 2's population statistics, each over
    pop_stats_batches batches of its own training pipeline (as bnrepro-bn-stats does), normalised
    as the member takes its inputs; members that share a pipeline see the same batches."""
    loaders, models = {}, []
    for m, runtime in zip(members, runtimes, strict=True):
        data_cfg = member_data_config(cfg.data, m)
        key = OmegaConf.to_yaml(data_cfg)
        if key not in loaders:
            train_ds = build_datasets(data_cfg)[0]
            loaders[key] = build_train_loader(
                data_cfg, train_ds, seed=cfg.seed, rank=0, world_size=1
            )
        models.append(population_model(m.model, loaders[key], runtime, cfg.pop_stats_batches))
    return models


def describe_changes(changes: dict) -> str:
    """A member's section 4.2.3 changes in words, e.g. "member 1: init x1.5, dropout 10%, head BN"."""
    parts = []
    if changes.get("init_gain") not in (None, 1, 1.0):
        parts.append(f"init x{changes['init_gain']:g}")
    if changes.get("dropout"):
        parts.append(f"dropout {100 * changes['dropout']:g}%")
    if changes.get("head_bn"):
        parts.append("head BN")
    words = ", ".join(parts) or "none"
    return words if changes.get("member") is None else f"member {changes['member']}: {words}"


def _rows(members: list[Member], ev: Evaluation, cfg: DictConfig, set_names: list[str]) -> list:
    """The Figure 4 rows: every member alone, then the ensemble (fractions in [0, 1])."""
    rows = []
    for s, bn_stats in enumerate(set_names):
        suffix = "" if bn_stats == "moving" else " (population BN)"
        names = [m.name for m in members] + [f"ensemble of {len(members)}"]
        changes = [describe_changes(m.changes()) for m in members] + ["-"]
        for i, name in enumerate(names):
            if i == len(members) and len(members) == 1:
                continue  # an ensemble of one is its member
            top1, top5 = ev.correct[s, i].tolist()  # counts: exact fractions below
            rows.append(
                {
                    "model": name + suffix,
                    "resolution": cfg.resolution,
                    "crops": cfg.crops,
                    "models": len(members) if i == len(members) else 1,
                    "top1_error": 1 - top1 / ev.images,
                    "top5_error": 1 - top5 / ev.images,
                    "bn_stats": bn_stats,
                    "images": ev.images,
                    "changes": changes[i],
                }
            )
    return rows


def evaluate_ensemble(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Check everything, evaluate, write results.json/.md (and probs.npz); returns results."""
    run_dir = Path(run_dir)
    if cfg.crops not in CROP_COUNTS:
        raise EnsembleError(f"crops must be one of {CROP_COUNTS}, got {cfg.crops}")
    if cfg.batch_crops < 1 or cfg.pop_stats_batches < 0:
        raise EnsembleError("batch_crops must be >= 1 and pop_stats_batches >= 0")
    device = distributed.resolve_device(cfg.runtime.device, key="runtime.device")
    runtime = engine.build_runtime(cfg.runtime, cfg.data, device)
    specs = cfg.checkpoints
    paths = find_checkpoints(
        specs if isinstance(specs, str) else list(specs), cfg.member_checkpoint
    )
    members = [load_member(p) for p in paths]
    names = [m.name for m in members]
    for m in members:  # two checkpoints of one run: tell them apart by file name
        if names.count(m.name) > 1:
            m.name = f"{m.name}/{m.path.name}"
    _, val_ds, classes = build_datasets(cfg.data)
    check_members(members, list(classes), cfg.data.in_chans)
    images = ValImages(val_ds, cfg.max_images)
    if len(images) == 0:
        raise EnsembleError(f"the val set under {cfg.data.root} is empty: check data.root")
    print(f"{len(members)} member(s): " + ", ".join(str(m.path) for m in members))
    print(f"{len(images)} images x {cfg.crops} crops at {cfg.resolution} px on {device}")

    for m in members:
        m.model.to(device)
        if runtime.channels_last:
            m.model.to(memory_format=torch.channels_last)
    runtimes = member_runtimes(members, runtime)
    model_sets, set_names = [[m.model for m in members]], ["moving"]
    if cfg.pop_stats_batches:
        model_sets.append(_pop_stats_models(members, cfg, runtimes))
        set_names.append("population")
    if runtime.compile:
        model_sets = [[torch.compile(model) for model in models] for models in model_sets]

    loader = image_loader(images, cfg.batch_crops // cfg.crops, cfg.data.num_workers, device)
    start = time.time()
    ev = evaluate_crops(
        model_sets,
        loader,
        n_crops=cfg.crops,
        resolution=cfg.resolution,
        runtime=runtime,
        member_runtimes=runtimes,
        save_probs=cfg.save_probs,
        progress=bars_enabled(cfg.runtime.progress, is_main=True),  # a terminal only
        total=len(images),
    )
    seconds = time.time() - start
    results = {
        "rows": _rows(members, ev, cfg, set_names),
        "members": [
            {
                "checkpoint": str(m.path),
                "name": m.name,
                "experiment_name": m.experiment,
                "images_seen": m.images_seen,
                "changes": m.changes(),
                "selected_on_val": m.selected_on_val,
                "sha256": file_sha256(m.path),  # exactly which file was evaluated
                "wandb_run_id": m.wandb_run_id,
                "artifact": member_artifact_name(m),
                "input_mean": _as_list(rt.mean),
                "input_std": _as_list(rt.std),
                **(
                    {"pop_stats_data": OmegaConf.to_container(member_data_config(cfg.data, m))}
                    if cfg.pop_stats_batches
                    else {}
                ),
            }
            for m, rt in zip(members, runtimes, strict=True)
        ],  # fmt: skip
        "member_checkpoint": cfg.member_checkpoint,
        "selected_on_val": any(m.selected_on_val for m in members),
        "crops": cfg.crops,
        "resolution": cfg.resolution,
        "images": ev.images,
        "skipped_files": ev.skipped,
        "classes": len(classes),
        "images_per_s": ev.images / seconds,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "git_sha": (env := environment(device))["git_sha"],
        "environment": env,
    }
    _write(results, ev, members, classes, run_dir, cfg)
    if cfg.logger.wandb.mode != "disabled":
        _log_wandb(results, members, cfg, run_dir)
    return results


def _as_list(x: torch.Tensor) -> list[float]:
    """A Runtime's mean or std in the data config's units (fractions of 255)."""
    return [v / 255 for v in x.flatten().tolist()]


def figure4_markdown(rows: list[dict]) -> str:
    """The Figure 4 table: our errors (results.json rows) beside the paper's (docs/paper.md
    section 4) where the paper has the same number of crops and models, and each member's
    section 4.2.3 changes."""
    lines = [
        "| model | resolution | crops | models | top-1 error | top-5 error | paper top-1 | paper top-5 | changes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        paper = FIGURE4.get((r["crops"], r["models"]), (None, None))
        lines.append(
            f"| {r['model']} | {r['resolution']} | {r['crops']} | {r['models']} "
            f"| {percent(r['top1_error'])} | {percent(r['top5_error'])} "
            f"| {paper_percent(paper[0])} | {paper_percent(paper[1])} | {r.get('changes', '-')} |"
        )
    return "\n".join(lines) + "\n"


def percent(x: float | None) -> str:
    """One of our fractions as a percentage with one decimal, "-" for none."""
    return "-" if x is None else f"{100 * x:.1f}%"


def paper_percent(x: float | None) -> str:
    """One of the paper's fractions as the paper prints it (21.99%, 4.9%), "-" for none."""
    return "-" if x is None else f"{100 * x:.4g}%"


def _markdown(results: dict) -> str:
    lines = [
        f"# Ensemble evaluation: {results['crops']} crops, {results['images']} images",
        "",
        "Errors are fractions of the val set shown as %; the paper's are its Figure 4 (ImageNet,",
        "50,000 images); rows without a paper number have no counterpart there.",
        "",
        figure4_markdown(results["rows"]),
        *(SELECTED_ON_VAL if results["selected_on_val"] else []),
        "Members:",
        "",
        *(
            f"- {m['name']}: `{m['checkpoint']}` ({m['images_seen']} images)"
            for m in results["members"]
        ),
        "",
        f"git {results['git_sha']}, {results['environment']}, "
        f"{results['images_per_s']:.2f} images/s",
        "",
    ]
    return "\n".join(lines)


SELECTED_ON_VAL = [
    "**Members selected on this val set**: best.pt is each run's checkpoint with the best val",
    "top-1 during training, picked on the same images these errors are measured on, so the",
    "errors are optimistic; the paper does not describe such a selection (member_checkpoint=last",
    "evaluates the end of training).",
    "",
]


def _write(results: dict, ev: Evaluation, members: list, classes, run_dir: Path, cfg) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    files = [run_dir / "results.json", run_dir / "results.md"]
    files[0].write_text(json.dumps(results, indent=2) + "\n")
    files[1].write_text(_markdown(results))
    if ev.probs is not None:
        arrays = {"probs": ev.probs[0], "labels": ev.labels}
        if len(ev.probs) > 1:
            arrays["probs_population"] = ev.probs[1]
        np.savez_compressed(
            run_dir / "probs.npz",
            members=np.array([m.name for m in members]),
            classes=np.array(list(classes)),
            **arrays,
        )
    if cfg.results_dir:
        out = Path(cfg.results_dir)
        out.mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copy(f, out / f.name)
    print(_markdown(results))
    print(f"results: {files[0]}")


def member_artifact_name(member: Member) -> str:
    """The W&B artifact a member's file is a version of: its training run's `model-<run id>`
    (what logger.wandb.log_checkpoints logs), else one named after the member."""
    if member.wandb_run_id:
        return checkpoint_artifact_name(member.wandb_run_id)
    return "model-" + re.sub(r"[^\w.-]", "_", member.name)


def _log_wandb(results: dict, members: list[Member], cfg: DictConfig, run_dir: Path) -> None:
    import wandb

    w = cfg.logger.wandb
    group = w.group or "+".join(sorted({m.experiment or "unknown" for m in members}))
    run = wandb.init(
        project=w.project,
        entity=w.entity,
        group=group,
        job_type="ensemble",
        tags=list(w.tags),
        name=f"ensemble_{cfg.crops}crops_{len(members)}models",
        config=dict(results["config"], members=results["members"]),
        dir=wandb_dir(run_dir),
        mode=w.mode,
    )
    # Lineage: each member file as an input artifact (online: wandb cannot use an artifact
    # offline, where the run's config `members` names them). The same content as the version its
    # training run logged (logger.wandb.log_checkpoints) is that version.
    for m in members if run.settings.mode != "offline" else []:
        run.use_artifact(
            checkpoint_artifact(m.path, member_artifact_name(m), images_seen=m.images_seen)
        )
    columns = ["model", "resolution", "crops", "models", "top1_error", "top5_error", "bn_stats"]
    table = wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in results["rows"]])
    run.log({"figure4": table})
    for r in results["rows"]:
        run.summary[f"{r['model']}/top1_error"] = r["top1_error"]
        run.summary[f"{r['model']}/top5_error"] = r["top5_error"]
    run.finish()


def ensemble_job(cfg: DictConfig) -> None:
    """bnrepro-ensemble's Hydra job: evaluate into Hydra's run folder. A missing file or a bad
    value anywhere in the inputs (the data's checks included) is the user's: one line, exit 2."""
    from hydra.core.hydra_config import HydraConfig

    try:
        evaluate_ensemble(cfg, HydraConfig.get().runtime.output_dir)
    except (FileNotFoundError, ValueError) as e:
        if isinstance(e, UserError):
            raise
        raise EnsembleError(str(e)) from e


@hydra.main(config_path=CONFIG_DIR, config_name="ensemble", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    with hydra_job("bnrepro-ensemble", cfg, "ensemble"):
        ensemble_job(cfg)


def main(argv: list[str] | None = None) -> None:
    """python -m bnrepro.evaluation.ensemble [overrides]: bnrepro-ensemble (configs/ensemble.yaml)."""
    run_hydra_app(_hydra_main, argv, "bnrepro-ensemble")


if __name__ == "__main__":
    main()

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
as the others and as the val set, one training resolution) before any image is read. Each member
is scored at the resolution it trained at (its checkpoint's data.eval_crop; `resolution=N`
scores every member at N instead) and, as the paper's inference does, also with Algorithm 2's
population statistics (pop_stats_batches=auto: 100 batches, at most an epoch, of each member's
own training pipeline: its checkpoint's data config, colour strength, batch size, ...), beside
the moving averages. Every error has its 95% Wilson interval; the ensemble is tested against
each member, and population against moving statistics, on the same images (McNemar, exact).
Each image is decoded once; its crops are cut from the decoded tensor on the device
(bnrepro/evaluation/crops.py); the crops of several images go through each member as one
batch, and all members see a batch before the next is loaded. Each member's crops are
normalised with its checkpoint's data mean/std (its training config's; converted Caffe weights
store theirs, bnrepro/weights.py), else with this command's data.mean/std. Writes results.json,
results.md (and probs.npz with save_probs=true) into the run folder; exit status 0 on success,
2 with a one-line message on bad input.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from tqdm import tqdm

from bnrepro import checkpoint, distributed, engine, tracking
from bnrepro.config import pop_stats_batches
from bnrepro.console import bars_enabled
from bnrepro.data import WholeImages, build_datasets, build_train_loader, whole_image_loader
from bnrepro.errors import UserError
from bnrepro.evaluation.bn_stats import population_model, training_pipeline
from bnrepro.evaluation.crops import cut_crops
from bnrepro.figures.tables import ensemble_markdown
from bnrepro.metrics import topk_correct
from bnrepro.provenance import environment, file_sha256
from bnrepro.stats import mcnemar, wilson


class EnsembleError(UserError):
    """Bad input to the evaluator; the message names the problem and the fix."""


# ---- members -----------------------------------------------------------------------------


@dataclass
class Member:
    """One network of the ensemble: its checkpoint, rebuilt (checkpoint.load_model), and the name
    it is reported by (its run name, else the file name)."""

    checkpoint: checkpoint.Loaded
    name: str
    sha256: str  # of the file: exactly which network (results.json records it)

    @property
    def path(self) -> Path:
        return self.checkpoint.path

    @property
    def model(self) -> nn.Module:
        return self.checkpoint.model

    @property
    def config(self) -> dict:
        return self.checkpoint.config

    @property
    def selected_on_val(self) -> bool:
        """best.pt: the checkpoint with the best val top-1 during training."""
        return checkpoint.is_best(self.path)

    @property
    def has_bn(self) -> bool:
        return any(isinstance(m, _BatchNorm) for m in self.model.modules())

    @property
    def resolution(self) -> int | None:
        """The crop side it was evaluated at in training (its checkpoint's data.eval_crop)."""
        return (self.config.get("data") or {}).get("eval_crop")

    def changes(self) -> dict:
        """The ensemble changes this member trained with (section 4.2.3), and its table row."""
        model = self.config.get("model") or {}
        keys = ("init_gain", "dropout", "head_bn", "per_activation_bn")
        return {"member": self.config.get("member"), **{k: model.get(k) for k in keys}}


def load_members(specs: str | list[str], which: str) -> list[Member]:
    """The checkpoints `specs` names (checkpoint.find: one file reached twice is refused), each
    rebuilt; two files with the same content (a copy) are refused too: one network would count
    twice. Two checkpoints of one run are told apart by file name."""
    members, files = [], {}
    for path in checkpoint.find(specs, which):
        try:
            loaded = checkpoint.load_model(path)
        except checkpoint.CheckpointError as e:
            raise EnsembleError(f"ensemble member {path}: {e}") from e
        sha = file_sha256(path)
        if sha in files:
            raise EnsembleError(
                f"ensemble members {files[sha]} and {path} hold the same network (sha256 "
                f"{sha[:12]}...): it would count twice; list each network once"
            )
        files[sha] = path
        members.append(Member(loaded, loaded.config.get("run_name") or path.stem, sha))
    names = [m.name for m in members]
    for m in members:
        if names.count(m.name) > 1:
            m.name = f"{m.name}/{m.path.name}"
    return members


def check_members(members: list[Member], classes: list[str], in_chans: int) -> None:
    """Same class list (order included) everywhere, and the val set's channel count."""
    first = members[0].checkpoint
    for m in members:
        own = m.checkpoint
        if own.classes != first.classes:
            raise EnsembleError(
                f"{m.path} was trained on another class list ({len(own.classes)} classes, first "
                f"{own.classes[:3]}) than {first.path} ({len(first.classes)}, first "
                f"{first.classes[:3]}): an ensemble needs members of one dataset"
            )
        if own.classes != list(classes):
            raise EnsembleError(
                f"{m.path} was trained on {len(own.classes)} classes (first {own.classes[:3]}), "
                f"the val set has {len(classes)} (first {list(classes)[:3]}): use the members' "
                "dataset (data=..., data.root=...)"
            )
        if own.in_chans not in (None, in_chans):
            raise EnsembleError(
                f"{m.path} takes {own.in_chans} input channels, the data has {in_chans}: use the "
                "members' dataset"
            )


def evaluation_resolution(members: list[Member], resolution: int | None) -> int:
    """The crop side every member is evaluated at: `resolution` when set (the command line's),
    else the members' own (their checkpoints' data.eval_crop), which must then agree. A member
    with per-activation BN only takes the side it was built for."""
    if resolution is None:
        sides = {m.name: m.resolution for m in members}
        unknown = [name for name, side in sides.items() if side is None]
        if unknown:
            raise EnsembleError(
                f"{', '.join(unknown)} record no training resolution (their checkpoint has no "
                "data.eval_crop): set resolution=N, the crop side to evaluate at"
            )
        if len(set(sides.values())) > 1:
            listed = ", ".join(f"{name}: {side} px" for name, side in sides.items())
            raise EnsembleError(
                f"the members were trained at different resolutions ({listed}): an ensemble "
                "evaluates one crop size; set resolution=N to score them all at N px"
            )
        resolution = next(iter(sides.values()))
    for m in members:
        kwargs = m.checkpoint.arch["kwargs"]
        if kwargs.get("per_activation_bn") and kwargs.get("img_size") != resolution:
            raise EnsembleError(
                f"{m.path} has per-activation BN built for {kwargs.get('img_size')} px inputs, "
                f"not {resolution}: set resolution={kwargs.get('img_size')} or leave it unset"
            )
    return resolution


def check_pop_stats(members: list[Member], value: int | str) -> None:
    """An explicit number of Algorithm 2 batches needs BN in every member (auto skips those
    without)."""
    lacking = [m.name for m in members if not m.has_bn]
    if value != "auto" and value and lacking:
        raise EnsembleError(
            f"pop_stats_batches={value}, but {', '.join(lacking)} have no BN layer "
            "(Algorithm 2 applies to BN): set pop_stats_batches=auto (where there is BN) or 0"
        )


# ---- evaluation --------------------------------------------------------------------------


@dataclass
class Evaluation:
    """Whether each model got each image right, top-1 and top-5: hits [set, member or ensemble
    (last), image, k] (booleans, what the paired tests need); correct = their counts."""

    hits: torch.Tensor
    images: int
    skipped: int  # unreadable files left out
    probs: list[np.ndarray] | None  # per set: [members, images, classes], with save_probs
    labels: np.ndarray | None

    @property
    def correct(self) -> torch.Tensor:
        """[set, member or ensemble, k]: images right."""
        return self.hits.sum(2)


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
    # hits stay on the device: no host sync per batch (only save_probs copies to the host)
    hits_kept, kept, labels_kept, seen, skipped = [], [], [], 0, 0
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
        hits_kept.append(torch.stack([hits[k].view(n_sets, n_members + 1, -1) for k in (1, 5)], -1))
        if save_probs:
            kept.append(p[:, :-1].cpu())
            labels_kept.append(labels.cpu())
        seen += len(images)
    bar.close()
    if seen == 0:
        raise EnsembleError("the val set gave no image")
    probs_np = list(torch.cat(kept, dim=2).numpy()) if save_probs else None
    labels_np = torch.cat(labels_kept).numpy() if save_probs else None
    return Evaluation(torch.cat(hits_kept, dim=2).bool().cpu(), seen, skipped, probs_np, labels_np)


# ---- the app -----------------------------------------------------------------------------


def member_runtimes(members: list[Member], runtime: engine.Runtime) -> list[engine.Runtime]:
    """Each member's Runtime: `runtime` with the member's own input normalisation where its
    checkpoint stores one (the data config it trained with, or converted weights' mean/std);
    members with equal normalisations share one Runtime (one normalised batch)."""
    shared: dict[tuple, engine.Runtime] = {}
    out = []
    for m in members:
        normalization = m.checkpoint.normalization
        if normalization is None:
            out.append(runtime)
            continue
        key = (tuple(normalization[0]), tuple(normalization[1]))
        if key not in shared:
            own = runtime.with_normalization(*normalization)
            same = torch.equal(own.mean, runtime.mean) and torch.equal(own.std, runtime.std)
            shared[key] = runtime if same else own
        out.append(shared[key])
    return out


def _pop_stats_models(
    members: list[Member], cfg: DictConfig, runtimes: list[engine.Runtime]
) -> tuple[list[nn.Module], list[int]] | None:
    """Copies of the members with Algorithm 2's population statistics, each over its
    pop_stats_batches (auto: config.pop_stats_batches) batches of its own training pipeline (as
    bnrepro-bn-stats does), normalised as the member takes its inputs; members that share a
    pipeline see the same batches. A member without BN (under auto) is itself. Returns the
    models and each one's number of batches, or None when no member gets Algorithm 2."""
    if cfg.pop_stats_batches == 0:
        return None
    loaders, models, counts = {}, [], []
    for m, runtime in zip(members, runtimes, strict=True):
        if not m.has_bn:
            models.append(m.model)
            counts.append(0)
            continue
        data_cfg = training_pipeline(m.config, cfg.data)
        key = OmegaConf.to_yaml(data_cfg)
        if key not in loaders:
            train_ds = build_datasets(data_cfg)[0]
            loaders[key] = build_train_loader(
                data_cfg, train_ds, seed=cfg.seed, rank=0, world_size=1
            )
        batches = pop_stats_batches(
            cfg.pop_stats_batches, True, loaders[key].sampler.batches_per_epoch
        )
        models.append(population_model(m.model, loaders[key], runtime, batches))
        counts.append(batches)
    return (models, counts) if any(counts) else None


def describe_changes(changes: dict) -> str:
    """A member's section 4.2.3 changes in words, e.g. "member 1: init x1.5, dropout 10%, head BN"
    or "... per-activation BN in the last 2 modules"."""
    parts = []
    if changes.get("init_gain") not in (None, 1, 1.0):
        parts.append(f"init x{changes['init_gain']:g}")
    if changes.get("dropout"):
        parts.append(f"dropout {100 * changes['dropout']:g}%")
    if changes.get("head_bn"):
        parts.append("head BN")
    if changes.get("per_activation_bn"):
        parts.append(f"per-activation BN in the last {changes['per_activation_bn']} modules")
    words = ", ".join(parts) or "none"
    return words if changes.get("member") is None else f"member {changes['member']}: {words}"


def _names(members: list[Member], bn_stats: str) -> list[str]:
    """The row names of one model set: the members, then the ensemble."""
    suffix = "" if bn_stats == "moving" else " (population BN)"
    return [m.name + suffix for m in members] + [f"ensemble of {len(members)}{suffix}"]


def _rows(
    members: list[Member], ev: Evaluation, cfg: DictConfig, resolution: int, set_names: list[str]
) -> list:
    """The Figure 4 rows: every member alone, then the ensemble (fractions in [0, 1], with their
    95% Wilson intervals); `bn_stats` says which statistics a row's BN layers used ("none" for a
    member without BN)."""
    rows = []
    for s, bn_stats in enumerate(set_names):
        changes = [describe_changes(m.changes()) for m in members] + ["-"]
        for i, name in enumerate(_names(members, bn_stats)):
            if i == len(members) and len(members) == 1:
                continue  # an ensemble of one is its member
            top1, top5 = ev.correct[s, i].tolist()  # counts: exact fractions below
            has_bn = any(m.has_bn for m in members) if i == len(members) else members[i].has_bn
            rows.append(
                {
                    "model": name,
                    "data": cfg.data.name,
                    "resolution": resolution,
                    "crops": cfg.crops,
                    "models": len(members) if i == len(members) else 1,
                    "top1_error": 1 - top1 / ev.images,
                    "top5_error": 1 - top5 / ev.images,
                    "top1_error_ci95": list(wilson(ev.images - top1, ev.images)),
                    "top5_error_ci95": list(wilson(ev.images - top5, ev.images)),
                    "bn_stats": bn_stats if has_bn else "none",
                    "images": ev.images,
                    "changes": changes[i],
                }
            )
    return rows


def _comparisons(members: list[Member], ev: Evaluation, set_names: list[str]) -> list[dict]:
    """Paired tests on the same images (McNemar, exact): the ensemble against each member, per
    BN-statistics set, and with Algorithm 2 each model's population against its moving
    statistics; top-1 and top-5. `better`: A, B, or neither (no difference at 5%)."""
    if len(members) < 2 and len(set_names) < 2:
        return []
    pairs = []  # (a: (set, index), b: (set, index))
    n = len(members)
    for s in range(len(set_names)):
        pairs += [((s, n), (s, i)) for i in range(n)] if n > 1 else []
    if len(set_names) > 1:
        pairs += [((1, i), (0, i)) for i in range(n + (n > 1))]
    names = [_names(members, bn_stats) for bn_stats in set_names]
    out = []
    for (sa, a), (sb, b) in pairs:
        for k, metric in enumerate(("top1", "top5")):
            test = mcnemar(ev.hits[sa, a, :, k].tolist(), ev.hits[sb, b, :, k].tolist())
            out.append({
                "a": names[sa][a], "b": names[sb][b], "metric": metric, "a_only": test.a_only,
                "b_only": test.b_only, "p_value": test.p_value, "better": test.beats(),
            })  # fmt: skip
    return out


def evaluate_ensemble(cfg: DictConfig, run_dir: str | Path) -> dict:
    """bnrepro-ensemble: check everything, evaluate, write results.json/.md (and probs.npz) into
    `run_dir`, log to W&B if asked; returns the results. The folder is this process's alone
    (checkpoint.FolderLock) and must hold no earlier results; a refused run leaves it as it
    was."""
    run_dir = Path(run_dir)
    lock = checkpoint.FolderLock(run_dir).acquire("ensemble folder")
    try:
        if (run_dir / "results.json").exists():
            raise EnsembleError(
                f"{run_dir} holds the results of another evaluation: give a new folder "
                "(hydra.run.dir=...), never one with results in it"
            )
        return _evaluate_into(cfg, run_dir)
    except BaseException:
        lock.abandon()
        raise
    finally:
        lock.release()


def _evaluate_into(cfg: DictConfig, run_dir: Path) -> dict:
    device = distributed.resolve_device(cfg.runtime.device, key="runtime.device")
    runtime = engine.build_runtime(cfg.runtime, cfg.data, device)
    specs = cfg.checkpoints
    members = load_members(specs if isinstance(specs, str) else list(specs), cfg.member_checkpoint)
    _, val_ds, classes = build_datasets(cfg.data)
    check_members(members, list(classes), cfg.data.in_chans)
    resolution = evaluation_resolution(members, cfg.resolution)
    check_pop_stats(members, cfg.pop_stats_batches)
    images = WholeImages(val_ds, cfg.max_images)
    if len(images) == 0:
        raise EnsembleError(f"the val set under {cfg.data.root} is empty: check data.root")
    print(f"{len(members)} member(s): " + ", ".join(str(m.path) for m in members))
    where = "the members' own" if cfg.resolution is None else f"resolution={cfg.resolution}"
    print(f"{len(images)} images x {cfg.crops} crops at {resolution} px ({where}) on {device}")
    for m in members:
        if m.checkpoint.normalization is None:  # loudly: the command's mean/std stand in
            print(f"{m.name}: its checkpoint records no input mean/std: using data.mean/std")

    for m in members:
        m.model.to(device)
        if runtime.channels_last:
            m.model.to(memory_format=torch.channels_last)
    runtimes = member_runtimes(members, runtime)
    model_sets, set_names = [[m.model for m in members]], ["moving"]
    population = _pop_stats_models(members, cfg, runtimes)
    if population is not None:
        model_sets.append(population[0])
        set_names.append("population")
    if runtime.compile:
        model_sets = [[torch.compile(model) for model in models] for models in model_sets]

    loader = whole_image_loader(images, cfg.batch_crops // cfg.crops, cfg.data.num_workers, device)
    start = time.time()
    ev = evaluate_crops(
        model_sets,
        loader,
        n_crops=cfg.crops,
        resolution=resolution,
        runtime=runtime,
        member_runtimes=runtimes,
        save_probs=cfg.save_probs,
        progress=bars_enabled(cfg.runtime.progress, is_main=True),  # a terminal only
        total=len(images),
    )
    seconds = time.time() - start
    batches = population[1] if population else [0] * len(members)
    results = {
        "rows": _rows(members, ev, cfg, resolution, set_names),
        "comparisons": _comparisons(members, ev, set_names),
        "members": [
            _member_record(m, rt, cfg, n)
            for m, rt, n in zip(members, runtimes, batches, strict=True)
        ],
        "member_checkpoint": cfg.member_checkpoint,
        "selected_on_val": any(m.selected_on_val for m in members),
        "data": cfg.data.name,
        "crops": cfg.crops,
        "resolution": resolution,
        "resolution_from": "members" if cfg.resolution is None else "resolution",
        "images": ev.images,
        "skipped_files": ev.skipped,
        "classes": len(classes),
        "images_per_s": ev.images / seconds,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "git_sha": (env := environment(device))["git_sha"],
        "environment": env,
    }
    _write(results, ev, members, classes, run_dir, cfg.results_dir)
    if cfg.logger.wandb.mode != "disabled":
        tracking.log_ensemble(results, [_artifact(m) for m in members], cfg, run_dir)
    return results


def _member_record(m: Member, runtime: engine.Runtime, cfg: DictConfig, batches: int) -> dict:
    """What results.json says of a member: which file exactly (its sha256), its training run and
    changes, the resolution it trained at, the normalisation its crops got, and Algorithm 2's
    batches and data (0: moving averages only; a member without BN)."""
    record = {
        "checkpoint": str(m.path),
        "name": m.name,
        "experiment_name": m.config.get("experiment_name"),
        "images_seen": m.checkpoint.images_seen,
        "changes": m.changes(),
        "selected_on_val": m.selected_on_val,
        "sha256": m.sha256,  # exactly which file was evaluated
        "wandb_run_id": m.checkpoint.wandb_run_id,
        "artifact": tracking.member_artifact_name(m.checkpoint.wandb_run_id, m.name),
        "trained_resolution": m.resolution,
        "input_mean": [v / 255 for v in runtime.mean.flatten().tolist()],  # data-config units
        "input_std": [v / 255 for v in runtime.std.flatten().tolist()],
        "pop_stats_batches": batches,
    }
    if batches:
        record["pop_stats_data"] = OmegaConf.to_container(training_pipeline(m.config, cfg.data))
    return record


def _artifact(m: Member) -> tracking.MemberFile:
    return tracking.MemberFile(m.path, m.name, m.checkpoint.wandb_run_id, m.checkpoint.images_seen)


def _write(
    results: dict, ev: Evaluation, members: list[Member], classes, run_dir: Path, copy_to
) -> None:
    """results.json, results.md (bnrepro/figures/tables.py) and, with save_probs, probs.npz;
    with results_dir, a copy of them there."""
    run_dir.mkdir(parents=True, exist_ok=True)
    files = [run_dir / "results.json", run_dir / "results.md"]
    files[0].write_text(json.dumps(results, indent=2) + "\n")
    files[1].write_text(ensemble_markdown(results))
    if ev.probs is not None:
        arrays = {"probs": ev.probs[0], "labels": ev.labels}
        if len(ev.probs) > 1:
            arrays["probs_population"] = ev.probs[1]
        files.append(run_dir / "probs.npz")
        np.savez_compressed(
            files[-1],
            members=np.array([m.name for m in members]),
            classes=np.array(list(classes)),
            **arrays,
        )
    if copy_to:
        out = Path(copy_to)
        out.mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copy(f, out / f.name)
    print(ensemble_markdown(results))
    print(f"results: {files[0]}")

"""Where metrics go: <run_dir>/metrics.jsonl (always) and a W&B run (logger.wandb.mode).

One small interface, active on rank 0 only (other ranks get a tracker that does nothing).
metrics.jsonl is append-only, one JSON object per line (pandas.read_json(path, lines=True)); a
resumed run first drops the lines past its checkpoint, so the file stays one curve without
duplicates. Beside it: config.yaml (the resolved config) and overrides.yaml (the command line's
overrides, as Hydra's own .hydra/overrides.yaml), written once the run is accepted. The files'
names are the run folder's (checkpoint.RunFolder).

W&B: the run id is kept in the checkpoint; a resumed run passes it back with resume="allow" and
continues the same W&B run (online; wandb cannot resume an offline run: each start writes an
offline-run-<time>-<id> folder with the same id, and `wandb sync` given all of them uploads one
run: `sync_command`, printed at the end of an offline run). W&B's environment variables
(WANDB_MODE, _PROJECT, _ENTITY, _NAME, _RUN_GROUP, _TAGS, _NOTES) win over the logger config's
defaults (configs/logger/wandb.yaml), a command-line value wins over both; WANDB_DIR, when set,
replaces the run folder as wandb's directory.
logger.wandb.log_checkpoints=true logs every checkpoint as a version of the artifact
`model-<run id>` (type "model"; aliases latest, best and images-<N>), the names bnrepro-ensemble
uses to record which members it evaluated; `log_ensemble` is bnrepro-ensemble's W&B run.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from bnrepro.checkpoint import RunFolder
from bnrepro.paper import PAPER_BATCH

WANDB_MODE_ALIASES = {"dryrun": "offline", "run": "online"}  # wandb's own older spellings


class Tracker:
    def __init__(
        self,
        cfg: DictConfig,
        folder: RunFolder,
        *,
        enabled: bool,
        images_seen: int = 0,
        wandb_run_id: str | None = None,
        overrides: list[str] | None = None,
    ) -> None:
        """Open the metrics file (truncated to `images_seen`, the resume point) and W&B;
        record the command line's `overrides` (when given: a Hydra command's) in overrides.yaml."""
        self.enabled = enabled
        self.folder = folder
        self.path = folder.metrics
        self.wandb = None
        self.run_id = wandb_run_id
        if not enabled:
            return
        folder.path.mkdir(parents=True, exist_ok=True)
        # The resolved config beside the metrics (Hydra's .hydra/ is off: a refused run must not
        # overwrite anything, and this file is only written once the run is accepted).
        OmegaConf.save(cfg, folder.config, resolve=True)
        if overrides is not None:  # this start's; train.log has every start's
            OmegaConf.save(OmegaConf.create(list(overrides)), folder.overrides)
        self.checkpoints_as_artifacts = bool(cfg.logger.wandb.get("log_checkpoints", False))
        _truncate(self.path, images_seen)
        self.file = open(self.path, "a")  # noqa: SIM115  (open for the run's lifetime)
        if cfg.logger.wandb.mode != "disabled":
            self.wandb = _init_wandb(cfg, folder.path, wandb_run_id)
            self.run_id = self.wandb.id

    def log(self, metrics: dict, *, step: int, images_seen: int) -> None:
        """One line: step, images_seen, paper_steps, time, and the given metrics."""
        if not self.enabled:
            return
        row = {
            "step": step,
            "images_seen": images_seen,
            "paper_steps": images_seen / PAPER_BATCH,
            "time": time.time(),
            **metrics,
        }
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()  # a preempted job loses no line it has logged
        if self.wandb is not None:
            self.wandb.log(row, step=step)

    def log_checkpoints(self, paths: list[Path], *, images_seen: int) -> None:
        """With logger.wandb.log_checkpoints, the checkpoint files just written as one artifact
        version (aliases: latest for a periodic one, best for best.pt, images-<N>)."""
        if self.wandb is None or not self.checkpoints_as_artifacts or not paths:
            return
        best = self.folder.best in paths
        periodic = [p for p in paths if p != self.folder.best]
        aliases = [f"images-{images_seen}"] + ["latest"] * bool(periodic) + ["best"] * best
        self.wandb.log_artifact(
            checkpoint_artifact(
                (periodic or paths)[0], checkpoint_artifact_name(self.wandb.id),
                images_seen=images_seen,
            ),
            aliases=aliases,
        )  # fmt: skip

    def summary(self, values: dict) -> None:
        """Write summary.json (and the W&B run summary)."""
        if not self.enabled:
            return
        _write_atomic(self.folder.summary, json.dumps(values, indent=2) + "\n")
        if self.wandb is not None:
            self.wandb.summary.update(values)

    def sync_command(self) -> str | None:
        """The command that uploads this run to W&B when it logged offline, else None. Every start
        of an offline run writes a folder of its own, <wandb dir>/wandb/offline-run-<time>-<id>,
        all with the run's one id (wandb cannot resume offline); `wandb sync` given them all
        uploads them as that one run, in the order they were written."""
        if self.wandb is None or self.wandb.settings.mode != "offline":
            return None
        return f"wandb sync {wandb_dir(self.folder.path)}/wandb/offline-run-*-{self.run_id}"

    def close(self) -> None:
        if not self.enabled:
            return
        self.file.close()
        if self.wandb is not None:
            self.wandb.finish()


def _truncate(path: Path, images_seen: int) -> None:
    """Keep only the lines up to images_seen (all of a fresh run's old lines go: images_seen=0)."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    keep = [line for line in lines if (n := _images(line)) is not None and n <= images_seen]
    if len(keep) != len(lines):
        _write_atomic(path, "".join(keep))


def _write_atomic(path: Path, text: str) -> None:
    """A reader (or a crash) sees the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _images(line: str) -> int | None:
    try:  # a line cut short by a kill is dropped
        return json.loads(line)["images_seen"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return None


def checkpoint_artifact_name(run_id: str) -> str:
    """A training run's checkpoints are versions of this artifact (as Lightning names them)."""
    return f"model-{run_id}"


def checkpoint_artifact(path: Path, name: str, *, images_seen: int | None):  # -> wandb.Artifact
    """A checkpoint file as a W&B artifact of type "model" (the same name and content give the
    same version, wherever it is built: the ensemble's input is the training run's output)."""
    import wandb

    artifact = wandb.Artifact(name, type="model", metadata={"images_seen": images_seen})
    artifact.add_file(str(path), name="checkpoint.pt")  # one name: the content decides the version
    return artifact


def wandb_dir(run_dir: Path) -> str:
    """WANDB_DIR when the user set it (wandb's convention), else the run folder."""
    return os.environ.get("WANDB_DIR") or str(run_dir)


def _init_wandb(cfg: DictConfig, run_dir: Path, run_id: str | None):  # -> wandb.Run
    import wandb

    w = cfg.logger.wandb
    run = wandb.init(
        project=w.project,
        entity=w.entity,
        group=w.group,
        job_type="train",
        tags=list(w.tags),
        name=w.name or cfg.run_name,
        notes=w.notes,
        config=OmegaConf.to_container(cfg, resolve=True),
        id=run_id,
        resume="allow" if run_id else None,
        dir=wandb_dir(run_dir),
        mode=WANDB_MODE_ALIASES.get(w.mode, w.mode),  # its choices are the schema's
    )
    # Plot against the paper's x axis (Figures 2 and 3 count steps of 32 images).
    for prefix in ("train", "val", "val_popstats", "monitor"):
        run.define_metric(f"{prefix}/*", step_metric="paper_steps")
    return run


@dataclass
class MemberFile:
    """An ensemble member's file, as W&B records it."""

    path: Path
    name: str
    wandb_run_id: str | None  # its training run's, when it logged to W&B
    images_seen: int | None


def member_artifact_name(wandb_run_id: str | None, name: str) -> str:
    """The W&B artifact a member's file is a version of: its training run's `model-<run id>`
    (what logger.wandb.log_checkpoints logs), else one named after the member."""
    if wandb_run_id:
        return checkpoint_artifact_name(wandb_run_id)
    return "model-" + re.sub(r"[^\w.-]", "_", name)


def log_ensemble(results: dict, members: list[MemberFile], cfg: DictConfig, run_dir: Path) -> None:
    """bnrepro-ensemble's W&B run (job_type "ensemble"): the Figure 4 table, each row's errors in
    the summary, the members in its config and, online, each member file as an input artifact."""
    import wandb

    w = cfg.logger.wandb
    group = w.group or "+".join(sorted({r["experiment_name"] or "unknown"
                                        for r in results["members"]}))  # fmt: skip
    run = wandb.init(
        project=w.project,
        entity=w.entity,
        group=group,
        job_type="ensemble",
        tags=list(w.tags),
        name=w.name or f"ensemble_{cfg.crops}crops_{len(members)}models",
        notes=w.notes,
        config=dict(results["config"], members=results["members"]),
        dir=wandb_dir(run_dir),
        mode=WANDB_MODE_ALIASES.get(w.mode, w.mode),
    )
    # Lineage: each member file as an input artifact (online: wandb cannot use an artifact
    # offline, where the run's config `members` names them). The same content as the version its
    # training run logged (logger.wandb.log_checkpoints) is that version.
    for m in members if run.settings.mode != "offline" else []:
        name = member_artifact_name(m.wandb_run_id, m.name)
        run.use_artifact(checkpoint_artifact(m.path, name, images_seen=m.images_seen))
    columns = ["model", "resolution", "crops", "models", "top1_error", "top5_error", "bn_stats"]
    table = wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in results["rows"]])
    run.log({"figure4": table})
    for r in results["rows"]:
        run.summary[f"{r['model']}/top1_error"] = r["top1_error"]
        run.summary[f"{r['model']}/top5_error"] = r["top5_error"]
    run.finish()

"""A W&B report comparing the paper's variants (Figure 2 as live curves): bnrepro-dashboard.

    bnrepro-dashboard --dry-run                     # print the panel spec (no login needed)
    bnrepro-dashboard --entity ME                   # create the report (needs `wandb login`)
    bnrepro-dashboard --experiments inception,bn_x5,bn_x30

Each panel plots one metric against `paper_steps` (images / 32, what Figures 2 and 3 count),
with the runs grouped by W&B group (= `experiment_name`, set by logger/wandb.yaml): one line per
variant, the mean over its seeds, shaded by their standard deviation [ours: stddev rather than
min-max]. The spec is built from the experiment configs alone (`build_spec`, pure data, tested
offline); only `push` talks to W&B, and without a login it raises NoLoginError (a UserError:
the command ends in one line and exit status 2).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bnrepro.config import CONFIG_DIR, compose
from bnrepro.errors import ConfigError, MissingExtraError, UserError

X_AXIS = "paper_steps"  # logged by bnrepro.tracking beside every metric
PANELS = (  # (metric, title): Figure 2's curve first, then what explains it
    ("val/top1", "Validation top-1 (single crop) vs paper steps"),
    ("train/loss", "Training loss vs paper steps"),
)


class NoLoginError(UserError):
    """Creating the report needs a W&B login; the message names the login and the offline ways."""


def experiment_names() -> list[str]:
    """Every experiment in configs/experiment/, sorted."""
    return sorted(p.stem for p in Path(CONFIG_DIR, "experiment").glob("*.yaml"))


def build_spec(
    experiments: list[str] | None = None, entity: str | None = None, project: str | None = None
) -> dict:
    """The report as pure data: W&B project/entity and groups from the composed configs."""
    known = experiment_names()
    experiments = experiments or known
    unknown = sorted(set(experiments) - set(known))
    if unknown:
        raise ConfigError(f"unknown experiment(s) {unknown}; choose from {known}")
    configs = [compose(overrides=[f"experiment={n}", "logger=wandb"]) for n in experiments]
    wandb_cfgs = [c.logger.wandb for c in configs]
    projects = sorted({str(w.project) for w in wandb_cfgs})
    if project is None and len(projects) > 1:
        raise ConfigError(f"the experiments log to several projects {projects}; pass --project")
    return {
        "entity": entity or wandb_cfgs[0].entity,  # None: the login's default entity
        "project": project or projects[0],
        "title": "bnrepro: Batch Normalization variants (Ioffe & Szegedy 2015, Figure 2)",
        "groups": [str(w.group) for w in wandb_cfgs],
        "panels": [
            {
                "title": title,
                "x": X_AXIS,
                "y": metric,
                "groupby": "group",
                "aggregate": "mean",
                "spread": "stddev",
            }
            for metric, title in PANELS
        ],
    }


def build_wandb_report(spec: dict):  # -> wandb_workspaces.reports.v2.Report
    """The wandb-workspaces Report for a spec. Constructing it needs no login; saving does."""
    try:
        import wandb_workspaces.reports.v2 as wr
    except ImportError as e:
        raise MissingExtraError(
            "bnrepro-dashboard needs wandb-workspaces: pip install 'bnrepro[dashboard]'"
        ) from e

    group_list = ", ".join(repr(g) for g in spec["groups"])
    runset = wr.Runset(
        entity=spec["entity"] or "",
        project=spec["project"],
        name="variants",
        filters=f"Group in [{group_list}]",
        groupby=["group"],
    )
    panels = [
        wr.LinePlot(
            title=p["title"],
            x=p["x"],
            y=[p["y"]],
            title_x="paper steps (images / 32)",
            title_y=p["y"],
            groupby_aggfunc=p["aggregate"],
            groupby_rangefunc=p["spread"],
        )
        for p in spec["panels"]
    ]
    intro = (
        "One line per variant (W&B group = experiment_name): the mean over seeds, shaded by the "
        "standard deviation. x = paper steps (images seen / 32), as in the paper's Figures 2 and 3."
    )
    return wr.Report(
        entity=spec["entity"] or "",
        project=spec["project"],
        title=spec["title"],
        description="Validation accuracy and training loss of each variant, grouped over seeds.",
        blocks=[wr.P(intro), wr.PanelGrid(runsets=[runset], panels=panels)],
    )


def push(spec: dict) -> str:
    """Create the report on W&B and return its URL. Needs a login (`wandb login` or
    WANDB_API_KEY) and a reachable server."""
    import wandb
    from wandb.errors import UsageError

    try:
        api = wandb.Api()
    except UsageError as e:
        raise NoLoginError(
            "bnrepro-dashboard needs a W&B login to create the report: run `wandb login` or set "
            "WANDB_API_KEY (and --entity). Offline: `bnrepro-dashboard --dry-run` prints the spec, "
            "`bnrepro-report RUN_FOLDER...` compares the variants (Figures 2-3) from run folders."
        ) from e
    if not spec["entity"]:
        spec = dict(spec, entity=api.default_entity)
    report = build_wandb_report(spec)
    report.save()
    return report.url


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--experiments", default=None, help="comma-separated; default: all in configs/experiment"
    )
    p.add_argument(
        "--entity", default=None, help="W&B entity; default: logger/wandb.yaml, else yours"
    )
    p.add_argument("--project", default=None, help="W&B project; default: logger/wandb.yaml")
    p.add_argument("--dry-run", action="store_true", help="print the spec as JSON; no W&B access")
    args = p.parse_args(argv)
    experiments = args.experiments.split(",") if args.experiments else None
    spec = build_spec(experiments, entity=args.entity, project=args.project)
    if args.dry_run:
        print(json.dumps(spec, indent=1))
        return
    print(f"created {push(spec)}")

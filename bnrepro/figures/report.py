"""Figures 2-4 of the paper from training runs: curves, the steps-to-accuracy table, the ensemble table.

    bnrepro-report outputs/multirun/2026-11-24_12-00-00 --out results/proxy
    bnrepro-report outputs/inception_seed0 outputs/bn_x30_seed0 --out report/
    bnrepro-report --wandb my-entity/bnrepro --out report/      # needs `wandb login`

Reads each run folder's metrics.jsonl (written by bnrepro-train) and its config; a multirun folder
(or any folder) is searched for run folders below it. Writes figure2.png, figure3.md/.json and,
where ensemble results are found, figure4.md. A run that diverged (metrics.jsonl's `diverged` row)
is shown as the paper shows Inception at BN-x5's LR: "diverged", not an accuracy; its curve is
left out of Figure 2 and of its experiment's seed mean.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib
import pandas as pd
import yaml

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from bnrepro.checkpoint import RunFolder
from bnrepro.errors import UserError
from bnrepro.figures.tables import SELECTED_ON_VAL, figure3_markdown, figure4_markdown
from bnrepro.paper import FIGURE3


class ReportError(UserError):
    """Run folders, W&B runs or ensemble results that cannot make a report; the message says
    what to give instead."""


ORDER = ["inception", "bn_baseline", "bn_x5", "bn_x30", "bn_x5_sigmoid", "inception_sigmoid",
         "inception_x5"]  # fmt: skip


def _run_config(run: RunFolder) -> dict:
    if run.config.is_file():  # written by bnrepro-train when the run starts
        return yaml.safe_load(run.config.read_text())
    raise ReportError(f"{run.path}: no {run.config.name}: is it a bnrepro-train run folder?")


def find_runs(paths: list[str | Path]) -> list[RunFolder]:
    """Run folders (those holding their metrics file) at or below each path."""
    runs = []
    for path in map(Path, paths):
        if not path.exists():
            raise ReportError(f"{path} does not exist: give a run folder or a multirun folder")
        found = RunFolder.below(path, having="metrics")
        if not found:
            raise ReportError(
                f"no {RunFolder(path).metrics.name} at or below {path}: is it a bnrepro-train "
                "run folder?"
            )
        runs += found
    return runs


def load_runs(paths: list[str | Path]) -> pd.DataFrame:
    """One row per logged line of every run, with its run folder, experiment and seed."""
    frames = []
    for run in find_runs(paths):
        cfg = _run_config(run)
        df = _read_metrics(run.metrics)
        df["run"] = str(run.path)
        df["experiment"] = cfg.get("experiment_name", run.path.name)
        df["seed"] = cfg.get("seed", 0)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def _read_metrics(path: Path) -> pd.DataFrame:
    try:
        return pd.read_json(path, lines=True)
    except ValueError as err:  # pandas' word for a line that is not JSON: the file, not the code
        raise ReportError(f"{path}: not a metrics file written by bnrepro-train ({err})") from err


def load_wandb(path: str) -> pd.DataFrame:
    """The same frame from W&B: `entity/project` (all runs) or `entity/project/group`."""
    import wandb

    parts = path.split("/")
    project, group = "/".join(parts[:2]), (parts[2] if len(parts) > 2 else None)
    try:
        api = wandb.Api()
        runs = [
            (run.id, run.group, run.config.get("seed", 0), list(run.scan_history()))
            for run in api.runs(project, filters={"group": group} if group else None)
        ]
    # No login (UsageError), no network (CommError, OSError), no such project (ValueError).
    except (wandb.errors.Error, ValueError, OSError) as err:
        raise ReportError(
            f"cannot read W&B project {path!r}: {err} (run `wandb login` first)"
        ) from err
    if not runs:
        raise ReportError(f"W&B project {path!r} has no runs")
    frames = []
    for run_id, experiment, seed, history in runs:
        df = pd.DataFrame(history)
        df["run"], df["experiment"], df["seed"] = run_id, experiment, seed
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def diverged_runs(df: pd.DataFrame) -> pd.DataFrame:
    """One row per diverged run: its experiment, seed, run and the paper step it stopped at."""
    columns = ["experiment", "seed", "run", "paper_steps"]
    if "diverged" not in df:
        return pd.DataFrame(columns=columns)
    return df[df["diverged"].fillna(False).astype(bool)][columns].drop_duplicates("run")


def val_curves(df: pd.DataFrame) -> pd.DataFrame:
    """Validation top-1 per (experiment, seed, paper_steps)."""
    if "val/top1" not in df:
        raise ReportError("no val/top1 in the metrics: did the runs reach their first evaluation?")
    val = df.dropna(subset=["val/top1"])
    return val[["experiment", "seed", "run", "paper_steps", "val/top1"]].sort_values("paper_steps")


def steps_to(curve: pd.DataFrame, target: float) -> float | None:
    """First paper_steps at which val/top1 >= target (None if never)."""
    hit = curve[curve["val/top1"] >= target - 1e-12]
    return float(hit["paper_steps"].iloc[0]) if len(hit) else None


def figure3_table(
    curves: pd.DataFrame, reference: str = "inception", diverged: pd.DataFrame | None = None
) -> dict:
    """Figure 3: per experiment, paper steps to reach `reference`'s best accuracy, and max accuracy.

    steps_to_target and max_top1 are taken from the seed-mean curve (the target is the best of
    `reference`'s seed-mean curve); per_seed holds each seed's own steps, max and final
    accuracy, and *_mean / *_sd their mean and standard deviation over seeds (sd 0 for one seed).
    `diverged` (diverged_runs): runs left out of `curves`; an experiment whose every seed
    diverged has a row with None for its numbers, and every row lists its diverged seeds.
    """
    diverged = diverged_runs(pd.DataFrame()) if diverged is None else diverged
    curves = curves[~curves["run"].isin(set(diverged["run"]))]
    mean = curves.groupby(["experiment", "paper_steps"], as_index=False)["val/top1"].mean()
    if reference not in set(mean["experiment"]) and len(mean):  # none: every run diverged
        raise ReportError(f"no {reference!r} run among {sorted(set(mean['experiment']))}")
    target = float(mean[mean["experiment"] == reference]["val/top1"].max()) if len(mean) else None
    rows = {}
    for name, curve in mean.groupby("experiment"):
        paper_steps, paper_max = FIGURE3.get(name, (None, None))
        per_seed = {
            int(seed): {
                "steps_to_target": steps_to(c, target),
                "max_top1": float(c["val/top1"].max()),
                "final_top1": float(c["val/top1"].iloc[-1]),  # curves are sorted by paper_steps
                "final_paper_steps": float(c["paper_steps"].iloc[-1]),
            }
            for seed, c in curves[curves["experiment"] == name].groupby("seed")
        }
        rows[name] = {
            "steps_to_target": steps_to(curve, target),
            "max_top1": float(curve["val/top1"].max()),
            "paper_steps_to_72.2": paper_steps,
            "paper_max_top1": paper_max,
            "seeds": len(per_seed),
            **_spread(per_seed, "max_top1"),
            **_spread(per_seed, "final_top1"),
            "per_seed": per_seed,
        }
    for name, runs in diverged.groupby("experiment"):
        paper_steps, paper_max = FIGURE3.get(name, (None, None))
        row = rows.setdefault(name, {
            "steps_to_target": None, "max_top1": None, "paper_steps_to_72.2": paper_steps,
            "paper_max_top1": paper_max, "seeds": 0, "per_seed": {},
        })  # fmt: skip
        row["diverged_seeds"] = {int(seed): float(step) for seed, step
                                 in zip(runs["seed"], runs["paper_steps"], strict=True)}  # fmt: skip
    return {"target_top1": target, "reference": reference, "rows": _ordered(rows)}


def _spread(per_seed: dict, key: str) -> dict:
    values = pd.Series([s[key] for s in per_seed.values()], dtype=float)
    sd = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return {f"{key}_mean": float(values.mean()), f"{key}_sd": sd}


def _ordered(rows: dict) -> dict:
    rank = {name: i for i, name in enumerate(ORDER)}
    return dict(sorted(rows.items(), key=lambda kv: (rank.get(kv[0], len(ORDER)), kv[0])))


def plot_figure2(curves: pd.DataFrame, out: Path, title: str = "") -> None:
    """Figure 2: val top-1 vs paper steps (seed mean, min-max band), beside the paper's Figure 3 points."""
    fig, (ax, ax_paper) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [3, 2]})
    names = list(_ordered({n: None for n in curves["experiment"].unique()}))
    for name in names:
        c = curves[curves["experiment"] == name]
        stats = c.groupby("paper_steps")["val/top1"].agg(["mean", "min", "max"])
        seeds = c["seed"].nunique()
        (line,) = ax.plot(
            stats.index, stats["mean"], label=f"{name} ({seeds} seed{'s' * (seeds > 1)})"
        )
        if seeds > 1:
            ax.fill_between(
                stats.index, stats["min"], stats["max"], alpha=0.2, color=line.get_color()
            )
    ax.set_xlabel("training steps (paper steps = images seen / 32)")
    ax.set_ylabel("validation accuracy (top-1, single crop)")
    ax.set_title(title or "Ours: validation accuracy vs training steps (Figure 2)")
    ax.grid(alpha=0.3)
    if names:  # none when every run diverged
        ax.legend(fontsize=8)

    for name, (steps, top1) in FIGURE3.items():
        x = steps if steps is not None else 31e6
        ax_paper.scatter([x], [top1], marker="o" if steps else "x", s=50, label=name)
        ax_paper.annotate(name, (x, top1), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax_paper.axhline(0.722, ls="--", c="gray", lw=1)
    ax_paper.set_xscale("log")
    ax_paper.xaxis.set_minor_formatter(NullFormatter())  # no crowded labels
    ax_paper.set_xlabel("paper steps to reach 72.2% (x = never, placed at 31e6)")
    ax_paper.set_ylabel("max validation accuracy (paper)")
    ax_paper.set_title("The paper's Figure 3 (ImageNet)")
    ax_paper.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def _ensemble_rows(paths: list[str]) -> tuple[list[dict], bool]:
    """The rows of bnrepro-ensemble's results.json files, and whether any of their members was
    picked on the val set they report (member_checkpoint=best)."""
    rows, selected_on_val = [], False
    for path in map(Path, paths):
        if not path.exists():  # a typo would otherwise leave figure4.md out without a word
            raise ReportError(f"--ensemble {path} does not exist: give results.json or its folder")
        for f in [path] if path.is_file() else sorted(path.rglob("results.json")):
            try:
                data = json.loads(f.read_text())
            except json.JSONDecodeError as err:
                raise ReportError(f"{f}: not a results.json of bnrepro-ensemble ({err})") from err
            if isinstance(data, dict):
                rows += data.get("rows", [])
                selected_on_val |= bool(data.get("selected_on_val"))
    return rows, selected_on_val


def build_report(df: pd.DataFrame, out: Path, ensemble: list[str] = (), title: str = "") -> dict:
    """Write figure2.png, figure3.md/.json (and figure4.md) under `out`; return the Figure 3 table."""
    out.mkdir(parents=True, exist_ok=True)
    diverged = diverged_runs(df)
    finite = df[~df["run"].isin(set(diverged["run"]))]
    if len(finite) or not len(diverged):
        curves = val_curves(finite)
    else:  # every run diverged: a table of "diverged" rows, an empty Figure 2
        curves = pd.DataFrame(columns=["experiment", "seed", "run", "paper_steps", "val/top1"])
    plot_figure2(curves, out / "figure2.png", title)
    names = set(curves["experiment"])
    reference = "inception" if "inception" in names or not names else sorted(names)[0]
    table = figure3_table(curves, reference, diverged)
    (out / "figure3.json").write_text(json.dumps(table, indent=2))
    (out / "figure3.md").write_text(figure3_markdown(table))
    rows, selected_on_val = _ensemble_rows(list(ensemble))
    if rows:
        note = "\n" + "\n".join(SELECTED_ON_VAL) if selected_on_val else ""
        (out / "figure4.md").write_text(figure4_markdown(rows) + note)
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "runs", nargs="*", help="run folders or folders holding run folders (multirun)"
    )
    parser.add_argument("--wandb", help="read runs from W&B instead: entity/project[/group]")
    parser.add_argument(
        "--ensemble", nargs="*", default=[], help="bnrepro-ensemble results.json files or folders"
    )
    parser.add_argument("--out", default="report", help="output folder (default: report/)")
    parser.add_argument("--title", default="", help="title of the Figure 2 panel")
    args = parser.parse_args(argv)
    if not args.runs and not args.wandb:
        parser.error("give run folders, or --wandb entity/project[/group]")
    df = load_wandb(args.wandb) if args.wandb else load_runs(args.runs)
    table = build_report(df, Path(args.out), args.ensemble, args.title)
    print(figure3_markdown(table))
    print(f"wrote {args.out}/figure2.png, figure3.md, figure3.json")

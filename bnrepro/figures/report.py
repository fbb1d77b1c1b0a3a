"""Figures 2-4 of the paper from training runs, and the experiments on its claims.

    bnrepro-report outputs/multirun/2026-11-24_12-00-00 --out results/proxy
    bnrepro-report outputs/inception_seed0 outputs/bn_x30_seed0 --out report/
    bnrepro-report --wandb my-entity/bnrepro --out report/      # needs `wandb login`
    bnrepro-report outputs/lr --out results/lr_stability --lr-stability
    bnrepro-report outputs/lr --out results/covariate_shift --where optim.lr=0.0015 --covariate-shift
    bnrepro-report outputs/ablation --out results/ablation_421 --ablation bn_baseline,bn_x5

Reads each run folder's metrics.jsonl (written by bnrepro-train) and its config; a multirun folder
(or any folder) is searched for run folders below it. Runs are grouped by experiment and by every
config value that defines a run (runs.py): each group is one curve and one row, labelled by what
differs, its seeds averaged with a 95% t interval; different configs are never averaged.
Always writes figure2.png/.pdf/.svg (val top-1 against paper steps, a marker at each evaluation,
the chance line; beside it the paper's Figure 3, which is a table) and figure3.md/.json; with
ensemble results, figure4.md. A run that diverged (metrics.jsonl's `diverged` row) is shown as
the paper shows Inception at BN-x5's LR: "diverged", not an accuracy; its curve is left out of
Figure 2 and of its group's seed mean.
The modes add their own files: --lr-stability (lr_stability.py), --covariate-shift (shift.py),
--ablation (ablation.py). --where KEY=VALUE keeps the runs whose config has that value.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import yaml

from bnrepro.figures import ablation, lr_stability, shift
from bnrepro.figures.plotting import chance_lines, percent_axis, save_figure, seed_curve
from bnrepro.figures.runs import (
    CURVE_COLUMNS,
    ReportError,
    chance_levels,
    diverged_runs,
    figure3_table,
    load_runs,
    load_wandb,
    ordered,
    resolve_reference,
    setting,
    val_curves,
)
from bnrepro.figures.tables import (
    SELECTED_ON_VAL,
    display_name,
    figure3_markdown,
    figure4_markdown,
    paper_percent,
    paper_steps_text,
)
from bnrepro.paper import FIGURE3


def plot_figure2(
    curves: pd.DataFrame, stem: Path, title: str = "", chance: list[float] = ()
) -> list[Path]:
    """figure2() written as `stem`.png, .pdf and .svg."""
    return save_figure(figure2(curves, title, chance), stem)


def figure2(curves: pd.DataFrame, title: str = "", chance: list[float] = ()):
    """Figure 2: val top-1 against paper steps, one curve per configuration (seed mean, a marker
    at each evaluation, the 95% t band where it has seeds), beside the paper's Figure 3 table."""
    import matplotlib.pyplot as plt

    fig, (ax, ax_paper) = plt.subplots(1, 2, figsize=(14, 5.5),
                                       gridspec_kw={"width_ratios": [3, 1.6]})  # fmt: skip
    colors = plt.get_cmap("tab10" if curves["group"].nunique() <= 10 else "tab20").colors
    for i, group in enumerate(ordered(curves["group"].unique())):
        runs = curves[curves["group"] == group]
        seed_curve(ax, runs, "paper_steps", "val/top1", runs["label"].iloc[0],
                   color=colors[i % len(colors)])  # fmt: skip
    chance_lines(ax, list(chance))
    percent_axis(ax)
    ax.set_xlabel("training steps (paper steps = images seen / 32)")
    ax.set_ylabel("validation accuracy (top-1, single crop)")
    ax.set_title(title or "Ours: validation accuracy vs training steps (Figure 2)", fontsize=10)
    ax.grid(alpha=0.3)
    if len(curves):  # none when every run diverged
        ax.legend(fontsize=7, title="mean over seeds, 95% t band", title_fontsize=7)
    _paper_figure3(ax_paper)
    return fig


def _paper_figure3(ax) -> None:
    """The paper's Figure 3 as the paper prints it: a table (steps to 72.2%, max accuracy)."""
    rows = [
        [display_name(name), "never" if steps is None else paper_steps_text(steps),
         paper_percent(top1)]
        for name, (steps, top1) in FIGURE3.items()
    ]  # fmt: skip
    ax.axis("off")
    table = ax.table(cellText=rows, colLabels=["model", "steps to 72.2%", "max accuracy"],
                     loc="upper center", cellLoc="left")  # fmt: skip
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.scale(1, 1.4)
    ax.set_title("The paper's Figure 3 (ImageNet, a table)", fontsize=10)
    ax.text(0, 0.35, "Section 4.2.2: Inception with sigmoid never above 0.1%;\n"
            "Inception at 0.0075 (5x its LR) diverged.", fontsize=7, transform=ax.transAxes)  # fmt: skip


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


def build_report(
    df: pd.DataFrame,
    out: Path,
    ensemble: list[str] = (),
    title: str = "",
    reference: str | None = None,
) -> dict:
    """Write figure2.png/.pdf/.svg, figure3.md/.json (and figure4.md) under `out`; return the
    Figure 3 table. `reference`: the group (or an experiment with one group) whose best
    accuracy is the target; by default Inception's, else the first group in the paper's order.
    Everything is read and checked before the first file is written."""
    diverged = diverged_runs(df)
    finite = df[~df["run"].isin(set(diverged["run"]))]
    if len(finite) or not len(diverged):
        curves = val_curves(finite)
    else:  # every run diverged: a table of "diverged" rows, an empty Figure 2
        curves = pd.DataFrame(columns=CURVE_COLUMNS)
    groups = ordered(curves["group"].unique())
    if reference is None:
        reference = "inception" if "inception" in groups or not groups else groups[0]
    elif groups:
        reference = resolve_reference(reference, groups)
    table = figure3_table(curves, reference, diverged)
    rows, selected_on_val = _ensemble_rows(list(ensemble))
    out.mkdir(parents=True, exist_ok=True)
    plot_figure2(curves, out / "figure2", title, chance_levels(df) if "settings" in df else [])
    (out / "figure3.json").write_text(json.dumps(table, indent=2))
    (out / "figure3.md").write_text(figure3_markdown(table))
    if rows:
        note = "\n" + "\n".join(SELECTED_ON_VAL) if selected_on_val else ""
        (out / "figure4.md").write_text(figure4_markdown(rows) + note)
    return table


def select(df: pd.DataFrame, conditions: list[str]) -> pd.DataFrame:
    """The runs whose config has every KEY=VALUE of `conditions` (VALUE read as YAML: 0.0015,
    true, shards)."""
    for condition in conditions:
        key, sep, text = condition.partition("=")
        if not sep or not key:
            raise ReportError(f"--where {condition!r}: write KEY=VALUE, e.g. optim.lr=0.0015")
        values = setting(df, key)
        if values.isna().all():
            raise ReportError(f"--where {key}: no run's config defines {key}")
        wanted = yaml.safe_load(text)
        if isinstance(wanted, str):  # YAML reads 1e-3 as a string; the config holds a number
            try:
                wanted = float(text)
            except ValueError:
                pass
        df = df[values == wanted]
        if not len(df):
            raise ReportError(f"--where {condition}: no run has that value")
    return df


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
    parser.add_argument("--reference", help="the group whose best top-1 is Figure 3's target "
                        "(default: inception; with --ablation its first base)")  # fmt: skip
    parser.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                        help="keep only runs whose config has this value (repeatable)")  # fmt: skip
    parser.add_argument("--lr-stability", action="store_true",
                        help="final accuracy against optim.lr per experiment (lr_stability.*)")  # fmt: skip
    parser.add_argument("--covariate-shift", action="store_true",
                        help="the monitor's percentiles over training (covariate_shift.*)")  # fmt: skip
    parser.add_argument("--ablation", metavar="BASE,BASE",
                        help="each configuration against its nearest base (ablation.*)")  # fmt: skip
    args = parser.parse_args(argv)
    if not args.runs and not args.wandb:
        parser.error("give run folders, or --wandb entity/project[/group]")
    bases = args.ablation.split(",") if args.ablation else []
    df = load_wandb(args.wandb) if args.wandb else load_runs(args.runs)
    df = select(df, args.where)
    out = Path(args.out)
    # Every mode's inputs are checked before the first file is written.
    plans = []
    if args.lr_stability:
        plans.append(lr_stability.LRStability.of(df))
    if args.covariate_shift:
        plans.append(shift.CovariateShift.of(df))
    if bases:
        plans.append(ablation.Ablation.of(df, bases))
    reference = args.reference or (bases[0] if bases else None)
    table = build_report(df, out, args.ensemble, args.title, reference)
    print(figure3_markdown(table))
    written = ["figure2.png/.pdf/.svg", "figure3.md", "figure3.json"]
    for plan in plans:
        print(plan.write(out, table))
        written += plan.files
    print(f"wrote {', '.join(written)} in {out}")

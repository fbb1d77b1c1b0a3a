"""Where each network stops training as its learning rate grows (section 3.3: "Batch
Normalization enables higher learning rates"): bnrepro-report --lr-stability.

    scripts/lr_stability.sh            # Inception and BN-Baseline over a geometric optim.lr grid
    bnrepro-report outputs/lr_stability --out results/lr_stability --lr-stability

Each experiment's configurations must differ in optim.lr alone (runs.py groups them). A run ends
in one of three ways: diverged (the suite stopped it: a non-finite or exploding loss,
trainer.diverge_loss_factor), trained (its last top-1 is above chance by more than its 95% Wilson
interval), or not above chance. Per experiment and seed: the largest stable LR, the largest LR of
the grid at which that run and every run of a smaller LR did not diverge; and the largest
training LR, the same for "trained". Over seeds: their range and geometric mean with its 95% t
interval (stats.over_seeds on log10 LR). An experiment that did not diverge at the grid's top
has "at least" that LR (`censored`).
Writes lr_stability.json, lr_stability.md and lr_stability.png/.pdf/.svg (final top-1 against
LR; diverged runs as crosses in a strip below the axis, never on a real point).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bnrepro.figures.plotting import chance_lines, save_figure
from bnrepro.figures.runs import (
    ReportError,
    chance_levels,
    group_settings,
    ordered,
    seed_verdict,
    setting,
)
from bnrepro.figures.tables import display_name, interval, percent
from bnrepro.stats import over_seeds, wilson

DIVERGED, TRAINED, AT_CHANCE = "diverged", "trained", "not above chance"
UNFINISHED = "no evaluation"  # a run that failed before its first evaluation: listed, not judged


def run_outcomes(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run: experiment, seed, lr, outcome, the paper step it diverged at, its last
    top-1 (before any divergence), the paper step and image count of that evaluation. A run with
    neither an evaluation nor a divergence is "no evaluation": the summary lists it apart."""
    rows = []
    chance = dict(zip(df["run"], setting(df, "data.num_classes"), strict=True))
    lrs = dict(zip(df["run"], setting(df, "optim.lr"), strict=True))
    for run, lines in df.groupby("run", sort=False):
        if lrs[run] is None:
            raise ReportError(f"--lr-stability: {run} has no optim.lr in its config")
        gone = lines[lines["diverged"].fillna(False).astype(bool)] if "diverged" in lines else []
        evals = lines.dropna(subset=["val/top1"]) if "val/top1" in lines else lines.iloc[:0]
        last = evals.iloc[-1] if len(evals) else None
        images = (
            None if last is None or pd.isna(last.get("val/images")) else int(last["val/images"])
        )
        top1 = None if last is None else float(last["val/top1"])
        classes = chance[run]
        if len(gone):
            outcome = DIVERGED
        elif top1 is None:  # it stopped (failed, or still running) before its first evaluation
            outcome = UNFINISHED
        else:
            # Above chance by more than the evaluation's own noise; without its image count,
            # simply above 1/classes (the table says which).
            low = wilson(round(top1 * images), images)[0] if images else top1
            outcome = TRAINED if classes and low > 1 / classes else AT_CHANCE
        rows.append({
            "run": run, "experiment": lines["experiment"].iloc[0], "group": lines["group"].iloc[0],
            "seed": int(lines["seed"].iloc[0]), "lr": float(lrs[run]), "outcome": outcome,
            "diverged_at": float(gone["paper_steps"].iloc[0]) if len(gone) else None,
            "final_top1": None if len(gone) else top1,
            "final_paper_steps": None if last is None else float(last["paper_steps"]),
            "val_images": images,
        })  # fmt: skip
    return pd.DataFrame(rows)


def largest_lr(runs: pd.DataFrame, good: set[str]) -> float | None:
    """The largest LR whose run, and every run of a smaller LR, ended in `good` (one seed's runs)."""
    best = None
    for lr, outcome in sorted(zip(runs["lr"], runs["outcome"], strict=True)):
        if outcome not in good:
            break
        best = lr
    return best


def _over_seeds_lr(per_seed: dict[int, float | None], top: float) -> dict:
    values = [v for v in per_seed.values() if v is not None]
    out = {"per_seed": per_seed, "min": min(values, default=None),
           "max": max(values, default=None), "censored": top in values}  # fmt: skip
    if values and len(values) == len(per_seed):
        s = over_seeds([math.log10(v) for v in values])
        out |= {"geomean": 10**s.mean, "low": 10**s.low if s.n > 1 else None,
                "high": 10**s.high if s.n > 1 else None}  # fmt: skip
    return out


@dataclass
class LRStability:
    """The checked runs of an LR sweep, and what the report writes from them."""

    outcomes: pd.DataFrame
    chance: list[float]
    files = ("lr_stability.md", "lr_stability.json", "lr_stability.png/.pdf/.svg")

    @classmethod
    def of(cls, df: pd.DataFrame) -> LRStability:
        """Check that each experiment's configurations differ in optim.lr alone."""
        settings = group_settings(df)
        for experiment, groups in df.groupby("experiment")["group"].unique().items():
            values = [settings[g] for g in groups]
            keys = set.intersection(*(set(v) for v in values))
            other = sorted(k for k in keys if k != "optim.lr" and len({json.dumps(v[k]) for v in values}) > 1)  # fmt: skip
            if other:
                raise ReportError(
                    f"--lr-stability: {experiment}'s runs differ in {', '.join(other)} besides "
                    "optim.lr: give one LR sweep per experiment (--where KEY=VALUE selects one)"
                )
        return cls(run_outcomes(df), chance_levels(df))

    def summary(self) -> dict:
        """Per experiment: each LR's seeds and outcomes, and the largest stable LR over seeds."""
        networks = {}
        judged = self.outcomes[self.outcomes["outcome"] != UNFINISHED]
        for experiment in ordered(judged["experiment"].unique()):
            runs = judged[judged["experiment"] == experiment]
            top = float(runs["lr"].max())
            per_lr = {}
            for lr, at in runs.groupby("lr"):
                finals = at["final_top1"].dropna().tolist()
                s = over_seeds(finals) if finals else None
                per_lr[f"{lr:g}"] = {
                    "lr": float(lr), "seeds": len(at),
                    "outcomes": dict(zip(at["seed"].astype(int), at["outcome"], strict=True)),
                    "diverged_at": {int(r.seed): r.diverged_at for r in at.itertuples()
                                    if r.outcome == DIVERGED},
                    "final_top1": dict(zip(at["seed"].astype(int), at["final_top1"], strict=True)),
                    "final_top1_mean": s.mean if s else None,
                    "final_top1_low": s.low if s and s.n > 1 else None,
                    "final_top1_high": s.high if s and s.n > 1 else None,
                    "val_images": sorted({int(n) for n in at["val_images"].dropna()}),
                }  # fmt: skip
            by_seed = dict(list(runs.groupby("seed")))
            networks[experiment] = {
                "name": display_name(experiment),
                "lrs": sorted(float(lr) for lr in runs["lr"].unique()),
                "per_lr": per_lr,
                "largest_stable_lr": _over_seeds_lr(
                    {int(s): largest_lr(r, {TRAINED, AT_CHANCE}) for s, r in by_seed.items()}, top),
                "largest_training_lr": _over_seeds_lr(
                    {int(s): largest_lr(r, {TRAINED}) for s, r in by_seed.items()}, top),
            }  # fmt: skip
        unfinished = self.outcomes[self.outcomes["outcome"] == UNFINISHED]["run"].tolist()
        return {"chance_top1": self.chance, "outcomes": [DIVERGED, TRAINED, AT_CHANCE],
                "networks": networks, "ratios": _ratios(networks),
                "runs_without_evaluation": unfinished}  # fmt: skip

    def write(self, out: Path, table: dict | None = None) -> str:
        summary = self.summary()
        (out / "lr_stability.json").write_text(json.dumps(summary, indent=2) + "\n")
        text = lr_stability_markdown(summary)
        (out / "lr_stability.md").write_text(text)
        plot_lr_stability(self.outcomes, summary, out / "lr_stability")
        return text


def _ratios(networks: dict) -> dict:
    """Each network's geometric-mean largest stable LR over the first network's (the paper's
    order: Inception first)."""
    names = list(networks)
    base = networks[names[0]]["largest_stable_lr"].get("geomean") if names else None
    return {
        f"{other} / {names[0]}": networks[other]["largest_stable_lr"]["geomean"] / base
        for other in names[1:]
        if base and networks[other]["largest_stable_lr"].get("geomean")
    }


def lr_verdicts(summary: dict) -> list[str]:
    """Section 3.3's claim, judged seed by seed for the first two networks (the paper's order:
    Inception, then BN-Baseline): it holds where every seed of the second is stable (trains) up
    to a larger LR than any seed of the first, fails where no seed of the second goes beyond
    every seed of the first, and is not settled where the seeds overlap. A seed stable at no LR
    of its grid counts as 0."""
    names = list(summary["networks"])
    if len(names) < 2:
        return []
    a, b = (summary["networks"][n] for n in names[:2])
    lines = []
    for key, words in (("largest_stable_lr", "largest stable LR (no divergence)"),
                       ("largest_training_lr", "largest LR that trains above chance")):  # fmt: skip
        la = [v or 0.0 for v in a[key]["per_seed"].values()]
        lb = [v or 0.0 for v in b[key]["per_seed"].values()]
        verdict = seed_verdict(lb, la, f"every {b['name']} seed above every {a['name']} seed",
                               f"no {b['name']} seed above every {a['name']} seed")  # fmt: skip
        bound = " (at least: the grid's top)" if b[key]["censored"] else ""
        lines.append(
            f"**{words}, {b['name']} against {a['name']}: {verdict}** ({b['name']} "
            f"{_lr_text(min(lb))} to {_lr_text(max(lb))}{bound}, {a['name']} {_lr_text(min(la))} "
            f"to {_lr_text(max(la))}, over {len(lb)} and {len(la)} seeds)"
        )
    return lines


def _lr_text(lr: float | None) -> str:
    return "none" if lr is None else f"{lr:g}"


def lr_stability_markdown(summary: dict) -> str:
    """The LR-stability table and each network's largest stable LR."""
    lines = [
        "| network | optim.lr | seeds | diverged (at paper step) | not above chance | final top-1 [95% t interval over seeds] |",
        "|---|---|---|---|---|---|",
    ]
    for net in summary["networks"].values():
        for lr, row in net["per_lr"].items():
            diverged = ", ".join(
                f"seed {s} ({step:,.0f})" for s, step in row["diverged_at"].items()
            )
            stalled = [s for s, o in row["outcomes"].items() if o == AT_CHANCE]
            final = "-" if row["final_top1_mean"] is None else percent(row["final_top1_mean"])
            final += interval(row["final_top1_low"], row["final_top1_high"])
            lines.append(f"| {net['name']} | {lr} | {row['seeds']} | {diverged or '-'} "
                         f"| {', '.join(f'seed {s}' for s in stalled) or '-'} | {final} |")  # fmt: skip
    lines.append("")
    for net in summary["networks"].values():
        for key, words in (("largest_stable_lr", "largest stable LR (no divergence)"),
                           ("largest_training_lr", "largest LR that trains above chance")):  # fmt: skip
            lr = net[key]
            per_seed = ", ".join(f"seed {s}: {_lr_text(v)}" for s, v in lr["per_seed"].items())
            at_least = " (the grid's top: at least)" if lr["censored"] else ""
            geo = f"; geometric mean {lr['geomean']:.3g}" if lr.get("geomean") else ""
            geo += f" [{lr['low']:.3g}, {lr['high']:.3g}]" if lr.get("low") else ""
            lines.append(f"- {net['name']}, {words}: {_lr_text(lr['min'])} to "
                         f"{_lr_text(lr['max'])}{at_least} ({per_seed}){geo}")  # fmt: skip
    for pair, ratio in summary["ratios"].items():
        lines.append(f"- largest stable LR, {pair}: {ratio:.3g}x (geometric means over seeds)")
    lines += ["", *lr_verdicts(summary)]
    if summary["runs_without_evaluation"]:
        lines.append(f"- left out, no evaluation and no divergence (failed?): "
                     f"{', '.join(summary['runs_without_evaluation'])}")  # fmt: skip
    return "\n".join(lines) + "\n"


def plot_lr_stability(outcomes: pd.DataFrame, summary: dict, stem: Path) -> list[Path]:
    """Final top-1 against LR (log scale), one colour per network: each seed a dot, the seed
    mean a line with its t interval; diverged runs as crosses in a strip below 0, and a dashed
    line at each network's geometric-mean largest stable LR."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    colors = plt.get_cmap("tab10").colors
    for i, (experiment, net) in enumerate(summary["networks"].items()):
        color = colors[i % len(colors)]
        runs = outcomes[outcomes["experiment"] == experiment]
        done = runs.dropna(subset=["final_top1"])
        ax.scatter(done["lr"], done["final_top1"], s=12, color=color, alpha=0.5)
        means = [(r["lr"], r["final_top1_mean"], r["final_top1_low"], r["final_top1_high"])
                 for r in net["per_lr"].values() if r["final_top1_mean"] is not None]  # fmt: skip
        if means:
            x, y, low, high = zip(*means, strict=True)
            err = [[m - (lo if lo is not None else m) for m, lo in zip(y, low, strict=True)],
                   [(hi if hi is not None else m) - m for m, hi in zip(y, high, strict=True)]]  # fmt: skip
            ax.errorbar(x, y, yerr=err, color=color, marker="o", ms=4, capsize=3,
                        label=f"{net['name']} (mean over seeds, 95% t interval)")  # fmt: skip
        gone = runs[runs["outcome"] == DIVERGED]
        strip = -0.04 - 0.04 * i  # below the axis: a cross never sits on a real accuracy
        # Seeds side by side (a few percent apart on the log axis), so each one shows.
        rank = gone.groupby("lr").cumcount() - (gone.groupby("lr")["lr"].transform("size") - 1) / 2
        ax.scatter(gone["lr"] * 1.08**rank, [strip] * len(gone), marker="x", s=30, color=color,
                   label=f"{net['name']}: diverged (one cross per seed)" if len(gone) else None)  # fmt: skip
        stable = net["largest_stable_lr"].get("geomean")
        if stable:
            ax.axvline(stable, ls="--", lw=1, color=color)
    chance_lines(ax, summary["chance_top1"])
    ax.axhline(-0.015, color="black", lw=0.6)
    ax.set_xscale("log")
    ax.set_ylim(-0.02 - 0.04 * len(summary["networks"]), None)
    ticks = [t for t in ax.get_yticks() if t >= 0 and t <= ax.get_ylim()[1]]
    ax.set_yticks([*ticks, -0.02 - 0.02 * len(summary["networks"])])
    ax.set_yticklabels([f"{100 * t:.0f}%" for t in ticks] + ["diverged"])
    ax.set_xlabel("initial learning rate, optim.lr (the paper's, for a batch of 32)")
    ax.set_ylabel("final validation top-1 (below the line: diverged)")
    ax.set_title("Largest stable learning rate (dashed: geometric mean over seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, stem)

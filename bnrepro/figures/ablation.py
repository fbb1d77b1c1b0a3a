"""Section 4.2.1's changes one at a time: each configuration against its nearest base
(bnrepro-report --ablation bn_baseline,bn_x5).

    scripts/ablation_421.sh            # configs/experiment/ablation/: one change each
    bnrepro-report outputs/ablation_421 --out results/ablation_421 --ablation bn_baseline,bn_x5

Every other configuration is compared with the base it differs from in the fewest defining keys
(runs.py's settings; a tie goes to the first base named): a change added to BN-Baseline, or taken
from BN-x5. Per configuration: paper steps to the target (Figure 3's, by default the first base's
best seed-mean accuracy) per seed and their mean; the final top-1's mean with its 95% t interval
over seeds; and the difference from the base, seed by seed (the same seed: the same
initialisation where the network's parameters are the same, the same data order where the
shuffling is), with the 95% t interval of the mean difference (stats.over_seeds). With one seed
there is no interval: the table says so. Writes ablation.json, ablation.md and
ablation.png/.pdf/.svg (the differences with their intervals, one panel per base).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bnrepro.figures.plotting import save_figure
from bnrepro.figures.runs import ReportError, group_settings, ordered, resolve_reference, value_text
from bnrepro.figures.tables import interval, paper_steps_text, percent
from bnrepro.stats import over_seeds


def differences(base: dict, other: dict) -> dict[str, list]:
    """The keys both configurations have whose values differ: {key: [base's, other's]}."""
    return {k: [base[k], other[k]] for k in sorted(set(base) & set(other)) if base[k] != other[k]}


@dataclass
class Ablation:
    """Each configuration's base and change, and what the report writes from them."""

    bases: list[str]
    changes: dict[str, tuple[str, dict[str, list]]]  # group -> (its base, {key: [base, its]})
    files = ("ablation.md", "ablation.json", "ablation.png/.pdf/.svg")

    @classmethod
    def of(cls, df: pd.DataFrame, bases: list[str]) -> Ablation:
        """Find each base (a group, or an experiment with one configuration here) and assign
        every other configuration to its nearest."""
        settings = group_settings(df)
        groups = list(settings)
        bases = [resolve_reference(name, groups) for name in bases]
        if len(set(bases)) < len(bases):
            raise ReportError(f"--ablation names one base twice: {bases}")
        changes = {}
        for group in ordered(groups):
            if group in bases:
                continue
            found = [(len(d), i, b, d) for i, b in enumerate(bases)
                     if (d := differences(settings[b], settings[group]))]  # fmt: skip
            if len(found) < len(bases):
                same = [b for b in bases if not differences(settings[b], settings[group])]
                raise ReportError(
                    f"--ablation: {group} has the configuration of the base {same[0]}: a "
                    "repeat of the base is more seeds of it, not a change (give it its seed)"
                )
            _, _, base, diff = min(found)
            changes[group] = (base, diff)
        return cls(bases, changes)

    def summary(self, table: dict) -> dict:
        """Per configuration: its base, change, and the numbers of Figure 3's table `table`
        (figure3_table with the target this report used) with the paired differences."""
        rows = table["rows"]
        out = {}
        for group in [*self.bases, *self.changes]:
            row = rows.get(group, {})
            base, change = self.changes.get(group, (None, {}))
            entry = {
                "name": row.get("name", group), "base": base, "change": change,
                "seeds": row.get("seeds", 0), "diverged_seeds": row.get("diverged_seeds", {}),
                "per_seed": row.get("per_seed", {}),
                "reached_target": row.get("seeds_reaching_target", 0),
            }  # fmt: skip
            for key in ("final_top1", "max_top1", "steps_to_target"):
                for part in ("mean", "sd", "low", "high"):
                    entry[f"{key}_{part}"] = row.get(f"{key}_{part}")
            if base is not None:
                entry |= _paired(rows.get(base, {}).get("per_seed", {}), entry["per_seed"])
            out[group] = entry
        return {"target_top1": table["target_top1"], "reference": table["reference"],
                "bases": self.bases, "rows": out}  # fmt: skip

    def write(self, out: Path, table: dict) -> str:
        summary = self.summary(table)
        (out / "ablation.json").write_text(json.dumps(summary, indent=2) + "\n")
        text = ablation_markdown(summary)
        (out / "ablation.md").write_text(text)
        plot_ablation(summary, out / "ablation")
        return text


def _paired(base: dict, other: dict) -> dict:
    """The final top-1 difference from the base, seed by seed, and its mean's 95% t interval."""
    seeds = sorted(set(base) & set(other))
    deltas = {s: other[s]["final_top1"] - base[s]["final_top1"] for s in seeds}
    if not deltas:
        return {"delta_final_top1": {}, "delta_mean": None, "delta_low": None, "delta_high": None}
    s = over_seeds(list(deltas.values()))
    low, high = (s.low, s.high) if s.n > 1 else (None, None)
    return {"delta_final_top1": deltas, "delta_mean": s.mean, "delta_low": low, "delta_high": high}


def row_verdict(row: dict) -> str:
    """A configuration against its base by the 95% t interval of the seed-paired difference."""
    if row.get("base") is None:
        return "-"
    if row.get("delta_low") is None:
        return "no interval (one seed)" if row.get("delta_mean") is not None else "no seeds to pair"
    if row["delta_low"] > 0:
        return "higher than its base"
    if row["delta_high"] < 0:
        return "lower than its base"
    return "no difference detected"


def _change_text(change: dict) -> str:
    return "; ".join(f"{k}: {value_text(a)} -> {value_text(b)}" for k, (a, b) in change.items())


def _points(x: float | None, low: float | None, high: float | None) -> str:
    """A difference of fractions in percentage points, with its interval."""
    if x is None:
        return "-"
    text = f"{100 * x:+.1f} pt"
    return text + (f" [{100 * low:+.1f}, {100 * high:+.1f}]" if low is not None else "")


def ablation_markdown(summary: dict) -> str:
    lines = [
        f"Target: {percent(summary['target_top1'])}, the best seed-mean val top-1 of "
        f"`{summary['reference']}`. Intervals: 95%, Student t over seeds; a difference is the "
        "mean of the seed-by-seed differences from the base.",
        "",
        "| configuration | base | change | seeds | steps to target (per seed; mean) | final top-1 [95% interval] | final top-1 minus the base's [95% interval] | verdict | max top-1 (mean +- sd) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summary["rows"].values():
        steps = ", ".join(paper_steps_text(s["steps_to_target"]) for s in row["per_seed"].values())
        if row["steps_to_target_mean"] is not None:
            steps += f"; {row['steps_to_target_mean']:,.0f}"
        seeds = str(row["seeds"])
        if row["diverged_seeds"]:
            seeds += f" (+{len(row['diverged_seeds'])} diverged)"
        final = "-" if row["final_top1_mean"] is None else percent(row["final_top1_mean"])
        final += interval(row["final_top1_low"], row["final_top1_high"])
        top = "-" if row["max_top1_mean"] is None else (
            f"{percent(row['max_top1_mean'])} +- {100 * row['max_top1_sd']:.1f}")  # fmt: skip
        delta = _points(row.get("delta_mean"), row.get("delta_low"), row.get("delta_high"))
        lines.append(
            f"| {row['name']} | {row['base'] or '(base)'} | {_change_text(row['change']) or '-'} "
            f"| {seeds} | {steps or '-'} | {final} | {delta if row['base'] else '-'} "
            f"| {row_verdict(row)} | {top} |"
        )
    return "\n".join(lines) + "\n"


def plot_ablation(summary: dict, stem: Path) -> list[Path]:
    """Each configuration's final top-1 minus its base's (percentage points, 95% t interval),
    one panel per base."""
    import matplotlib.pyplot as plt

    bases = summary["bases"]
    fig, axes = plt.subplots(1, len(bases), squeeze=False, figsize=(6 * len(bases), 4.5))
    for ax, base in zip(axes[0], bases, strict=True):
        rows = [
            r for r in summary["rows"].values() if r["base"] == base and r["delta_mean"] is not None
        ]
        for y, row in enumerate(rows):
            low, high = row["delta_low"], row["delta_high"]
            if low is not None:
                ax.plot([100 * low, 100 * high], [y, y], color="tab:blue", lw=2)
            ax.plot(100 * row["delta_mean"], y, "o", color="tab:blue")
            ax.plot([100 * d for d in row["delta_final_top1"].values()], [y] * len(row["delta_final_top1"]),
                    "x", color="gray", ms=4)  # fmt: skip
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(range(len(rows)), [_change_text(r["change"]) for r in rows], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("final top-1 minus the base's (percentage points; x = one seed)")
        ax.set_title(f"against {summary['rows'][base]['name']}", fontsize=10)
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle("Section 4.2.1's changes one at a time: mean and 95% t interval over seeds",
                 fontsize=10)  # fmt: skip
    return save_figure(fig, stem)

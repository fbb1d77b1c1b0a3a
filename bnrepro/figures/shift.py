"""Internal covariate shift in BN-Inception, drawn as the paper's Figure 1(b, c) is for MNIST:
the 15th, 50th and 85th percentiles of a nonlinearity's input over training, without BN and with
BN (bnrepro-report --covariate-shift).

    bnrepro-train experiment=inception trainer.monitor.layers=[blocks.5b.branch1x1]
    bnrepro-report outputs/lr_stability --where optim.lr=0.0015 --covariate-shift --out DIR

The numbers are the monitor's (bnrepro/monitor.py, `monitor/<module>/p15|p50|p85` in
metrics.jsonl): recorded on a training batch, in training mode, over every value of the module's
input (every channel and position), not one unit as the paper's MNIST panels. One column per
configuration (seed means, with the 95% t band where there are seeds), one row per monitored
nonlinearity, a shared y-axis along a row. Diverged runs are left out. Writes
covariate_shift.json (every point, and each percentile's first, last, lowest and highest value)
and covariate_shift.png/.pdf/.svg.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bnrepro.figures.plotting import save_figure, seed_curve
from bnrepro.figures.runs import ReportError, diverged_runs, ordered, seed_verdict

PERCENTILES = ("p15", "p50", "p85")  # Figure 1(b, c)
STYLES = {"p15": ":", "p50": "-", "p85": "--"}  # as bnrepro-fig1 draws them
MAX_PANELS = 6  # more columns than this are unreadable: --where selects


@dataclass
class CovariateShift:
    """The monitor's lines of the chosen runs, and what the report writes from them."""

    lines: pd.DataFrame  # group, label, seed, paper_steps, layer, p15, p50, p85
    files = ("covariate_shift.json", "covariate_shift.png/.pdf/.svg")

    @classmethod
    def of(cls, df: pd.DataFrame) -> CovariateShift:
        columns = [c for c in df.columns if c.startswith("monitor/") and c.endswith("/p50")]
        if not columns:
            raise ReportError(
                "--covariate-shift: no monitor/* columns in the metrics: train with "
                "trainer.monitor.layers=[blocks.5b.branch1x1] (bnrepro/monitor.py)"
            )
        df = df[~df["run"].isin(set(diverged_runs(df)["run"]))]
        frames = []
        for column in columns:
            layer = column.removeprefix("monitor/").removesuffix("/p50")
            rows = df.dropna(subset=[column])
            frame = rows[["group", "label", "seed", "paper_steps"]].copy()
            frame["layer"] = layer
            for p in PERCENTILES:
                frame[p] = rows[f"monitor/{layer}/{p}"]
            frames.append(frame)
        lines = pd.concat(frames, ignore_index=True)
        groups = lines["group"].nunique()
        if groups > MAX_PANELS:
            raise ReportError(
                f"--covariate-shift: {groups} configurations carry monitor data, more than "
                f"{MAX_PANELS} panels: choose with --where (e.g. --where optim.lr=0.0015)"
            )
        return cls(lines)

    def summary(self) -> dict:
        """Per configuration and nonlinearity: the seed-mean percentiles at every recording,
        their first, last, lowest and highest values, and the drift: how far the percentiles
        move over training, as a fraction of the 15-85 spread (per seed, and of the means)."""
        out = {}
        for (group, layer), at in self.lines.groupby(["group", "layer"]):
            mean = at.groupby("paper_steps")[list(PERCENTILES)].mean()
            entry = {"label": at["label"].iloc[0], "seeds": int(at["seed"].nunique()),
                     "paper_steps": mean.index.tolist(), "drift": drift(mean),
                     "drift_per_seed": {int(s): drift(r.set_index("paper_steps"))
                                        for s, r in at.groupby("seed")}}  # fmt: skip
            for p in PERCENTILES:
                values = mean[p].tolist()
                entry[p] = values
                entry[f"{p}_first"], entry[f"{p}_last"] = values[0], values[-1]
                entry[f"{p}_min"], entry[f"{p}_max"] = min(values), max(values)
            out.setdefault(group, {})[layer] = entry
        return {"groups": {g: out[g] for g in ordered(out)}}

    def write(self, out: Path, table: dict | None = None) -> str:
        summary = self.summary()
        (out / "covariate_shift.json").write_text(json.dumps(summary, indent=2) + "\n")
        self.plot(out / "covariate_shift")
        lines = shift_verdicts(summary)
        for layers in summary["groups"].values():
            for layer, e in layers.items():
                lines.append(
                    f"{e['label']}, {layer}: p15/p50/p85 {e['p15_first']:+.2f}/"
                    f"{e['p50_first']:+.2f}/{e['p85_first']:+.2f} at step "
                    f"{e['paper_steps'][0]:,.0f} -> {e['p15_last']:+.2f}/{e['p50_last']:+.2f}/"
                    f"{e['p85_last']:+.2f} at step {e['paper_steps'][-1]:,.0f}"
                )
        return "\n".join(lines)

    def plot(self, stem: Path) -> list[Path]:
        """One column per configuration, one row per nonlinearity, as bnrepro-fig1 draws (b, c)."""
        import matplotlib.pyplot as plt

        groups = ordered(self.lines["group"].unique())
        layers = sorted(self.lines["layer"].unique())
        fig, axes = plt.subplots(len(layers), len(groups), squeeze=False, sharey="row",
                                 figsize=(4.6 * len(groups), 3.6 * len(layers)))  # fmt: skip
        for r, layer in enumerate(layers):
            for c, group in enumerate(groups):
                ax = axes[r][c]
                at = self.lines[(self.lines["group"] == group) & (self.lines["layer"] == layer)]
                for p in PERCENTILES:
                    seed_curve(ax, at, "paper_steps", p, f"{p[1:]}th", ls=STYLES[p], color="black")
                label = at["label"].iloc[0] if len(at) else group
                ax.set_title(f"{label}\n{layer}", fontsize=9)
                ax.set_xlabel("training steps (paper steps)")
                ax.set_ylabel("input to the nonlinearity (all channels)" if c == 0 else "")
                ax.grid(alpha=0.3)
                ax.legend(fontsize=7, title="percentile", title_fontsize=7)
        fig.suptitle("Internal covariate shift (the paper's Figure 1(b, c), here in BN-Inception)",
                     fontsize=10)  # fmt: skip
        return save_figure(fig, stem)


def drift(percentiles: pd.DataFrame) -> float:
    """How far the distribution moves over training: the largest range (highest minus lowest
    over the recordings) of the 15th, 50th or 85th percentile, over the mean 15-85 spread.
    0 for a distribution that never moves; the paper's Figure 1(b) (no BN) moves, (c) (BN)
    hardly does."""
    ranges = max(float(percentiles[p].max() - percentiles[p].min()) for p in PERCENTILES)
    spread = float((percentiles["p85"] - percentiles["p15"]).mean())
    return ranges / spread if spread > 0 else float("inf")


def shift_verdicts(summary: dict) -> list[str]:
    """Figure 1's claim in BN-Inception, judged seed by seed for the first two configurations
    (the paper's order: Inception, then BN-Baseline) on each nonlinearity they share: it holds
    where every seed of the first drifts more than every seed of the second, fails where none
    does, and is not settled where the seeds overlap."""
    groups = list(summary["groups"].values())
    if len(groups) < 2:
        return []
    a, b = groups[:2]
    lines = []
    for layer in sorted(set(a) & set(b)):
        da, db = (
            list(a[layer]["drift_per_seed"].values()),
            list(b[layer]["drift_per_seed"].values()),
        )
        name_a, name_b = a[layer]["label"], b[layer]["label"]
        verdict = seed_verdict(da, db, f"every {name_a} seed drifts more than every {name_b} seed",
                               f"no {name_a} seed drifts more than every {name_b} seed")  # fmt: skip
        lines.append(
            f"**{layer}, drift over the 15-85 spread, {name_a} against {name_b}: {verdict}** "
            f"({name_a} {min(da):.2f} to {max(da):.2f}, {name_b} {min(db):.2f} to {max(db):.2f}, "
            f"over {len(da)} and {len(db)} seeds)"
        )
    return lines

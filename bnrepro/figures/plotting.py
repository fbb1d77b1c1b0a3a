"""What every figure of the report shares: the three file formats, accuracy in percent, the chance
line, curves with a marker at each evaluation and a band from true seeds only.

matplotlib runs headless (Agg): the report draws on machines without a display.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import pandas as pd

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import PercentFormatter  # noqa: E402

from bnrepro.stats import over_seeds  # noqa: E402

FORMATS = ("png", "pdf", "svg")  # a raster to look at, vectors for a paper or a slide


def save_figure(fig: plt.Figure, stem: Path) -> list[Path]:
    """Write `stem`.png, .pdf and .svg; close the figure; return the files."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    paths = [stem.with_suffix(f".{fmt}") for fmt in FORMATS]
    for path in paths:
        fig.savefig(path, dpi=150)
    plt.close(fig)
    return paths


def percent_axis(ax: plt.Axes, axis: str = "y") -> None:
    """Fractions shown as percentages, as the paper prints accuracy."""
    getattr(ax, f"{axis}axis").set_major_formatter(PercentFormatter(1.0, decimals=0))


def chance_lines(ax: plt.Axes, levels: list[float]) -> None:
    """A dotted line at each uniform guess's top-1 (1 / classes)."""
    for level in levels:
        ax.axhline(level, ls=":", lw=1, c="gray")
        ax.annotate(f"chance ({100 * level:.3g}%)", (0, level), xycoords=("axes fraction", "data"),
                    xytext=(3, 2), textcoords="offset points", fontsize=7, color="gray")  # fmt: skip


def seed_curve(
    ax: plt.Axes, runs: pd.DataFrame, x: str, y: str, label: str, **style
) -> tuple[plt.Line2D, int]:
    """The seed-mean of `y` against `x` with a marker at each point, and, where two or more
    seeds have a value, the band of the mean's 95% t interval (stats.over_seeds). `runs` must be
    one configuration's seeds (runs.py groups them): the band is never drawn across configs.
    Returns the line and the number of seeds."""
    seeds = runs["seed"].nunique()
    points = runs.dropna(subset=[y]).groupby(x)[y].agg(list)
    mean = points.map(lambda v: sum(v) / len(v))
    text = f"{label} ({seeds} seed{'s' * (seeds > 1)})"
    (line,) = ax.plot(mean.index, mean.values, marker="o", ms=3, label=text, **style)
    spread = points[points.map(len) > 1].map(over_seeds)
    if len(spread):
        ax.fill_between(spread.index, spread.map(lambda s: s.low), spread.map(lambda s: s.high),
                        alpha=0.18, color=line.get_color(), lw=0)  # fmt: skip
    return line, seeds
